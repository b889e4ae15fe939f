/**
 * Process liveness, the one check: a pid plus its start time names one process for good (a pid reused
 * after a crash has another start time), and a zombie counts as ended.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { procStat, type StartTime } from "./proc.js";

export type { StartTime } from "./proc.js";

/** The start time of a running (not zombie) process, or undefined. */
export function processStartTime(pid: number): StartTime | undefined {
  const s = procStat(pid);
  return s && s.state !== "Z" && s.state !== "X" ? s.startTime : undefined;
}

/**
 * Whether `pid` still runs (not a zombie) and, when `startTime` is given, is the process recorded with
 * it (compared exactly: a record without a start time must pass undefined, not 0, to match any).
 * Synchronous (see procStat).
 */
export function isSameProcess(pid: number, startTime?: StartTime): boolean {
  const now = processStartTime(pid);
  return now !== undefined && (startTime === undefined || now === startTime);
}

/** Waits until the process has ended, up to `ms`; returns whether it did. */
export async function waitExit(pid: number, ms: number, startTime?: StartTime): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!isSameProcess(pid, startTime)) return true;
    await sleep(25);
  }
  return !isSameProcess(pid, startTime);
}

/** Sends a signal; a process that is already gone is not an error. */
export function signalProcess(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}
