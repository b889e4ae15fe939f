import { readFile } from "node:fs/promises";

/** State letter and start time (field 22, clock ticks since boot) of a process, or null. */
async function procStat(pid: number): Promise<{ state: string; startTime: string } | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // comm (field 2) may contain spaces and parentheses: fields after the last ")" are fixed.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { state: f[0], startTime: f[19] };
  } catch {
    return null;
  }
}

export async function processStartTime(pid: number): Promise<string | null> {
  return (await procStat(pid))?.startTime ?? null;
}

/**
 * Whether `pid` still runs (not a zombie) and is the process recorded earlier: the same start
 * time, so a reused pid is not mistaken for it.
 */
export async function isSameProcess(pid: number, startTime?: string): Promise<boolean> {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  const s = await procStat(pid);
  if (!s || s.state === "Z" || s.state === "X") return false;
  return !startTime || s.startTime === startTime;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until `pid` has exited, up to `ms`; returns whether it did. */
export async function waitExit(pid: number, ms: number, startTime?: string): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!(await isSameProcess(pid, startTime))) return true;
    await sleep(25);
  }
  return !(await isSameProcess(pid, startTime));
}

export function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}
