import { readFile } from "node:fs/promises";

/**
 * A process's start time (clock ticks since boot, /proc/<pid>/stat field 22). With the pid it
 * names one process for good: a pid reused after a crash has another start time.
 */
export async function processStartTime(pid: number): Promise<number | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and ")", so count fields after its last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (fields[0] === "Z") return undefined; // a zombie has finished; it only waits to be reaped
    return Number(fields[19]);
  } catch {
    return undefined;
  }
}

/** True if the process `pid` started at `startTime` still runs. */
export async function isProcessAlive(pid: number, startTime: number): Promise<boolean> {
  return (await processStartTime(pid)) === startTime;
}
