import { constants } from "node:os";
import type { ExitStatus } from "./types.js";

/** A signal's number (SIGTERM -> 15). */
export function signalNumber(signal: NodeJS.Signals): number {
  return constants.signals[signal] ?? 0;
}

/** The signal a shell-style status stands for (137 -> SIGKILL), if it is 128 + a known signal. */
export function signalOfStatus(status: number): NodeJS.Signals | undefined {
  if (status <= 128) return undefined;
  const n = status - 128;
  return (Object.keys(constants.signals) as NodeJS.Signals[]).find((s) => constants.signals[s] === n);
}

/**
 * A child's end as a shell reports it: its exit code, or 128 + n when signal n killed it. runc and
 * runsc already report a container killed by signal n as exit code 128 + n.
 */
export function exitStatusOf(code: number | null, signal: NodeJS.Signals | null): ExitStatus {
  if (signal) return { status: 128 + signalNumber(signal), signal };
  const status = code ?? 128;
  return { status, signal: signalOfStatus(status) };
}
