/** Named network namespaces (`ip netns`: a bind mount under /run/netns), one per run. */
import { exec } from "../util/exec.js";

export const NETNS_DIR = "/run/netns";

export function netnsPath(name: string): string {
  return `${NETNS_DIR}/${name}`;
}

export async function createNetns(name: string): Promise<string> {
  await exec("ip", ["netns", "add", name]);
  return netnsPath(name);
}

/** Removes the namespace; one that is already gone is not an error. */
export async function deleteNetns(name: string): Promise<void> {
  const r = await exec("ip", ["netns", "delete", name], { allowFailure: true });
  if (r.code !== 0 && !/No such file|not exist/i.test(r.stderr)) {
    throw new Error(`ip netns delete ${name} failed: ${r.stderr.trim()}`);
  }
}

/** The namespaces `ip netns` lists whose name starts with `prefix`. */
export async function listNetns(prefix: string): Promise<string[]> {
  const r = await exec("ip", ["netns", "list"], { allowFailure: true });
  return r.stdout
    .split("\n")
    .map((l) => l.split(" ")[0] ?? "")
    .filter((n) => n.startsWith(prefix));
}
