import { constants } from "node:os";

/** A signal name without "SIG" (TERM, KILL, USR1) or its number, as `kill -s` takes it. */
export function normalizeSignal(input: string): string | undefined {
  const s = input.trim().toUpperCase().replace(/^SIG/, "");
  if (/^\d+$/.test(s)) {
    const n = Number(s);
    const name = Object.entries(constants.signals).find(([, v]) => v === n)?.[0];
    return name?.replace(/^SIG/, "");
  }
  return isSignalName(s) ? s : undefined;
}

export function isSignalName(name: string): boolean {
  return /^[A-Z0-9]+$/.test(name) && `SIG${name}` in constants.signals;
}
