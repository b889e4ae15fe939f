/**
 * The one reader of /proc: process status fields, command lines and cgroups, the pid list, and the few
 * host facts kindling takes from there (limits, boot id, CPU rate, file systems, kernel release).
 */
import { readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";

/** A process's start time: clock ticks since boot, /proc/<pid>/stat field 22. With the pid it names one process. */
export type StartTime = number;

export interface ProcStat {
  /** R, S, D, Z (zombie), X (dead), ... */
  state: string;
  startTime: StartTime;
}

/**
 * State and start time of `pid`, or undefined when there is no such process. Synchronous: a read of a
 * small procfs file, usable where a lock check must not yield.
 */
export function procStat(pid: number): ProcStat | undefined {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // comm (field 2) may contain spaces and parentheses: fields after the last ")" are fixed.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { state: f[0], startTime: Number(f[19]) };
  } catch {
    return undefined;
  }
}

/** The pids of every process (the numeric entries of /proc). */
export async function listPids(): Promise<number[]> {
  return (await readdir("/proc")).filter((e) => /^\d+$/.test(e)).map(Number);
}

/** A process's command line, arguments joined by NUL; "" when it is gone or a kernel thread. */
export async function readCmdline(pid: number): Promise<string> {
  return readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
}

/** A process's /proc/<pid>/cgroup; "" when it is gone. */
export async function readCgroup(pid: number): Promise<string> {
  return readFile(`/proc/${pid}/cgroup`, "utf8").catch(() => "");
}

/** The hard RLIMIT_NOFILE of this process: the most a container may get without raising host limits. */
export async function hostNofileLimit(): Promise<number> {
  const text = await readFile("/proc/self/limits", "utf8");
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
  const hard = m?.[2];
  if (!hard || hard === "unlimited") return 1048576;
  return Number(hard);
}

/** This boot of the host ("" if unknown): cached facts about the host are valid for one boot. */
export async function bootId(): Promise<string> {
  return (await readFile("/proc/sys/kernel/random/boot_id", "utf8").catch(() => "")).trim();
}

/** /proc/cpuinfo ("" if unreadable). */
export function cpuinfo(): string {
  try {
    return readFileSync("/proc/cpuinfo", "utf8");
  } catch {
    return "";
  }
}

/** The file systems the running kernel can mount now (/proc/filesystems). */
export async function kernelFilesystems(): Promise<string[]> {
  const text = await readFile("/proc/filesystems", "utf8").catch(() => "");
  return text
    .split("\n")
    .map((l) => l.trim().split(/\s+/).pop() ?? "")
    .filter(Boolean);
}

/** The running kernel's release (uname -r), "" if unreadable. */
export async function kernelRelease(): Promise<string> {
  return (await readFile("/proc/sys/kernel/osrelease", "utf8").catch(() => "")).trim();
}
