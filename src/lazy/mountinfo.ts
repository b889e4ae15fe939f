import { readdir, readFile, writeFile } from "node:fs/promises";
import { exec } from "../util/exec.js";

export interface MountEntry {
  /** "major:minor" of the mounted filesystem; for FUSE the minor names its connection. */
  dev: string;
  mountpoint: string;
  fstype: string;
  source: string;
}

const unescapeOctal = (s: string) =>
  s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(Number.parseInt(o, 8)));

export async function readMountinfo(): Promise<MountEntry[]> {
  const text = await readFile("/proc/self/mountinfo", "utf8");
  const out: MountEntry[] = [];
  for (const line of text.split("\n")) {
    if (!line) continue;
    const [left, right] = line.split(" - ");
    const f = left.split(" ");
    const r = (right ?? "").split(" ");
    out.push({ dev: f[2], mountpoint: unescapeOctal(f[4]), fstype: r[0], source: unescapeOctal(r[1] ?? "") });
  }
  return out;
}

export async function mountAt(dir: string): Promise<MountEntry | undefined> {
  return (await readMountinfo()).filter((m) => m.mountpoint === dir).pop();
}

const FUSECTL = "/sys/fs/fuse/connections";

/**
 * Aborts a FUSE connection: every pending and future request fails at once (ENOTCONN), which is
 * the only way to release readers of a daemon that is alive but stuck.
 */
export async function abortFuseConnection(m: MountEntry): Promise<void> {
  const minor = m.dev.split(":")[1];
  const mounted = (await readMountinfo()).some((e) => e.fstype === "fusectl");
  if (!mounted) await exec("mount", ["-t", "fusectl", "fusectl", FUSECTL], { allowFailure: true });
  const conns = await readdir(FUSECTL).catch(() => [] as string[]);
  if (conns.includes(minor)) await writeFile(`${FUSECTL}/${minor}/abort`, "1").catch(() => {});
}

/** Detaches a mount even if it is busy or its FUSE daemon is gone. */
export async function lazyUnmount(dir: string): Promise<void> {
  const r = await exec("umount", ["-l", dir], { allowFailure: true });
  if (r.code !== 0 && (await mountAt(dir))) await exec("fusermount", ["-uz", dir], { allowFailure: true });
}

/** Releases a FUSE mount whatever state its daemon is in: abort the connection, then detach. */
export async function releaseFuseMount(dir: string): Promise<void> {
  const m = await mountAt(dir);
  if (!m) return;
  if (m.fstype.startsWith("fuse")) await abortFuseConnection(m);
  await lazyUnmount(dir);
}
