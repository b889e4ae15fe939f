import { readFile } from "node:fs/promises";

/** The hard RLIMIT_NOFILE of this process: the most a container may get without raising host limits. */
export async function hostNofileLimit(): Promise<number> {
  const text = await readFile("/proc/self/limits", "utf8");
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
  const hard = m?.[2];
  if (!hard || hard === "unlimited") return 1048576;
  return Number(hard);
}
