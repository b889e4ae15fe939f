/** Named network namespaces (a bind mount under /run/netns, as `ip netns` makes them), one per run. */
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { exec } from "../util/exec.js";

export const NETNS_DIR = "/run/netns";

export function netnsPath(name: string): string {
  return `${NETNS_DIR}/${name}`;
}

/**
 * Makes the namespace with `lo` up, in one process: `unshare --net=FILE` binds the new namespace to FILE
 * and execs `ip link set lo up` in it (runc brings `lo` up only in a namespace it makes itself; the CNI
 * loopback plugin would be one more process). The first time on a host (/run/netns not yet a mount
 * point) `ip netns add` is used instead: it makes /run/netns a shared mount, so a namespace mounted there
 * is seen from every mount namespace, as `ip` users expect.
 */
export async function createNetns(name: string, opts: { background?: boolean } = {}): Promise<string> {
  const file = netnsPath(name);
  if (!(await netnsDirIsMount())) {
    await exec("ip", ["netns", "add", name]);
    await exec("ip", ["-n", name, "link", "set", "lo", "up"]);
    return file;
  }
  await writeFile(file, "", { flag: "wx", mode: 0o444 });
  const argv = ["unshare", `--net=${file}`, "ip", "link", "set", "lo", "up"];
  // background work (the service's pool) at nice 10: `nice` execs unshare, one process as before
  const [cmd, ...args] = opts.background ? ["nice", "-n", "10", ...argv] : argv;
  const r = await exec(cmd!, args, { allowFailure: true });
  if (r.code !== 0) {
    // unshare binds before it execs ip: undo the mount too, then the file
    await deleteNetns(name).catch(() => {});
    await rm(file, { force: true });
    throw new Error(`unshare --net=${file} ip link set lo up failed: ${r.stderr.trim()}`);
  }
  return file;
}

let dirIsMount = false;
async function netnsDirIsMount(): Promise<boolean> {
  if (dirIsMount) return true;
  const info = await readFile("/proc/self/mountinfo", "utf8").catch(() => "");
  dirIsMount = info.split("\n").some((l) => l.split(" ")[4] === NETNS_DIR);
  if (!dirIsMount) await mkdir(NETNS_DIR, { recursive: true });
  return dirIsMount;
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
