/** Loop devices: the one wrapper of `losetup` (util-linux) and the sysfs files of the loop driver. */
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { exec } from "../util/exec.js";

/**
 * Attaches `file` to a free loop device, read-only. Direct I/O (the default) skips the host page
 * cache for the backing file (the squashfs mount caches pages itself). Without it the loop device
 * reads the file through the page cache, with the kernel's readahead: a lazy file's SquashFS does
 * that, since SquashFS reads one block at a time and waits for each (docs/lazy.md).
 */
export async function attachLoop(file: string, opts: { directIo?: boolean } = {}): Promise<string> {
  const dio = (opts.directIo ?? true) ? "on" : "off";
  const r = await exec("losetup", ["-r", `--direct-io=${dio}`, "--show", "-f", file]);
  const device = r.stdout.trim();
  if (!/^\/dev\/loop\d+$/.test(device)) throw new Error(`losetup printed no loop device for ${file}`);
  return device;
}

/** The file a loop device is attached to (" (deleted)" dropped), or undefined when it is free. */
export async function loopBackingFile(device: string): Promise<string | undefined> {
  try {
    const text = await readFile(`/sys/block/${path.basename(device)}/loop/backing_file`, "utf8");
    return text.trim().replace(/ \(deleted\)$/, "");
  } catch {
    return undefined;
  }
}

/** Whether a loop device is still attached (its sysfs backing file exists). */
export async function isLoopAttached(device: string): Promise<boolean> {
  return stat(`/sys/block/${path.basename(device)}/loop/backing_file`).then(
    () => true,
    () => false,
  );
}

/** A file's identity as the loop driver reports it: "<inode> <major>:<minor>". */
export async function fileIdentity(file: string): Promise<string> {
  const st = await stat(file, { bigint: true });
  const { major, minor } = devNumbers(st.dev);
  return `${st.ino} ${major}:${minor}`;
}

/** glibc's major()/minor() of a 64-bit dev_t (BigInt: JS shifts are 32-bit). */
export function devNumbers(dev: bigint): { major: bigint; minor: bigint } {
  return {
    major: ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn),
    minor: (dev & 0xffn) | ((dev >> 12n) & ~0xffn),
  };
}

/** The identity of the file a loop device is attached to (see fileIdentity), or undefined. */
async function loopBackingIdentity(device: string): Promise<string | undefined> {
  const r = await exec("losetup", ["-l", "-n", "-O", "BACK-INO,BACK-MAJ:MIN", device], {
    allowFailure: true,
  });
  const out = r.stdout.trim().split(/\s+/).join(" ");
  return r.code === 0 && out ? out : undefined;
}

/**
 * Detaches `device` if it is still attached to `file`: on a shared host a device we freed may
 * already serve someone else, and that one must not be torn down. `identity` (fileIdentity at
 * attach time) recognizes the file when its path changed, as a FUSE file's does when its daemon
 * died and the mount was detached lazily.
 */
export async function detachLoop(device: string, file: string, identity?: string): Promise<void> {
  const backing = await loopBackingFile(device);
  if (backing === undefined) return;
  const same =
    path.resolve(backing) === path.resolve(file) ||
    (identity !== undefined && (await loopBackingIdentity(device)) === identity);
  if (!same) return;
  const r = await exec("losetup", ["-d", device], { allowFailure: true });
  if (r.code !== 0 && (await loopBackingFile(device)) !== undefined) {
    throw new Error(`losetup -d ${device} failed: ${r.stderr.trim()}`);
  }
}

/**
 * Sets autoclear on a loop device that is in use (mounted): the kernel then detaches it when the
 * mount goes, even if kindling dies first. (LOOP_CLR_FD on a busy device sets autoclear.)
 */
export async function setLoopAutoclear(device: string): Promise<void> {
  await exec("losetup", ["-d", device]);
}

/** The first free loop device (`losetup -f`), or an Error with losetup's reason. */
export async function findFreeLoop(losetup = "losetup"): Promise<string> {
  const r = await exec(losetup, ["-f"], { allowFailure: true, timeout: 5000 });
  if (r.code !== 0) throw new Error(r.stderr.trim().split("\n")[0] || `status ${r.code}`);
  return r.stdout.trim();
}

/** Every attached loop device as `losetup -a` lists it: "/dev/loopN: []: (FILE)". */
export async function attachedLoops(): Promise<string[]> {
  return (await exec("losetup", ["-a"])).stdout.split("\n").filter(Boolean);
}
