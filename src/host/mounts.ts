/**
 * Mounts: the one reader of /proc/self/mountinfo, and mounting, unmounting and releasing FUSE mounts
 * whatever state their daemon is in.
 */
import { readdir, readFile, writeFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { exec } from "../util/exec.js";

export interface MountEntry {
  /** "major:minor" of the mounted filesystem; for FUSE the minor names its connection. */
  dev: string;
  mountPoint: string;
  fsType: string;
  source: string;
}

/** /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo. */
function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

/** Every mount this process sees, in mount order. */
export async function readMountinfo(): Promise<MountEntry[]> {
  const text = await readFile("/proc/self/mountinfo", "utf8");
  const out: MountEntry[] = [];
  for (const line of text.split("\n")) {
    // fields before " - " (the optional fields vary in number), then fstype, source, options
    const sep = line.indexOf(" - ");
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(" ");
    const right = line.slice(sep + 3).split(" ");
    out.push({
      dev: left[2],
      mountPoint: unescapeOctal(left[4]),
      fsType: right[0],
      source: unescapeOctal(right[1] ?? ""),
    });
  }
  return out;
}

/** The topmost mount at `dir`, if any. */
export async function mountAt(dir: string): Promise<MountEntry | undefined> {
  return (await readMountinfo()).filter((m) => m.mountPoint === dir).pop();
}

export async function isMounted(target: string): Promise<boolean> {
  return (await mountAt(target)) !== undefined;
}

/** Mounts whose mount point is `dir` or below it, deepest first (the order to unmount them). */
export async function mountsUnder(dir: string): Promise<MountEntry[]> {
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  return (await readMountinfo())
    .filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(prefix))
    .sort((a, b) => b.mountPoint.length - a.mountPoint.length);
}

export async function mount(fsType: string, source: string, target: string, options: string): Promise<void> {
  await exec("mount", ["-t", fsType, "-o", options, source, target]);
}

/**
 * Unmounts every mount stacked on `target`. A busy mount is retried for a moment (a container's
 * last process may still be exiting), then detached lazily so cleanup never blocks for good.
 */
export async function unmount(target: string): Promise<void> {
  for (let attempt = 0; await isMounted(target); attempt++) {
    const r = await exec("umount", [target], { allowFailure: true });
    if (r.code === 0) continue;
    if (attempt < 20 && /busy/i.test(r.stderr)) {
      await sleep(100);
      continue;
    }
    if (attempt >= 20) {
      process.stderr.write(`kindling: ${target} is still busy; detaching it lazily\n`);
      await exec("umount", ["-l", target]);
      continue;
    }
    throw new Error(`umount ${target} failed: ${r.stderr.trim()}`);
  }
}

const FUSECTL = "/sys/fs/fuse/connections";

/**
 * Aborts a FUSE connection: every pending and future request fails at once (ENOTCONN), which is
 * the only way to release readers of a daemon that is alive but stuck.
 */
export async function abortFuseConnection(m: MountEntry): Promise<void> {
  const minor = m.dev.split(":")[1];
  const mounted = (await readMountinfo()).some((e) => e.fsType === "fusectl");
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
  if (m.fsType.startsWith("fuse")) await abortFuseConnection(m);
  await lazyUnmount(dir);
}
