import { readFile } from "node:fs/promises";
import path from "node:path";
import { exec } from "../util/exec.js";

/**
 * Attaches `file` to a free loop device, read-only. Direct I/O skips the host page cache for the
 * backing file (the squashfs mount caches pages itself), which measured fastest over a FUSE file.
 */
export async function attachLoop(file: string): Promise<string> {
  const r = await exec("losetup", ["-r", "--direct-io=on", "--show", "-f", file]);
  const device = r.stdout.trim();
  if (!/^\/dev\/loop\d+$/.test(device)) throw new Error(`losetup printed no loop device for ${file}`);
  return device;
}

/** The file a loop device is attached to, or undefined when it is free. */
export async function loopBackingFile(device: string): Promise<string | undefined> {
  try {
    const text = await readFile(`/sys/block/${path.basename(device)}/loop/backing_file`, "utf8");
    return text.trim();
  } catch {
    return undefined;
  }
}

/**
 * Detaches `device` if it is still attached to `file`: on a shared host a device we freed may
 * already serve someone else, and that one must not be torn down.
 */
export async function detachLoop(device: string, file: string): Promise<void> {
  const backing = await loopBackingFile(device);
  if (backing === undefined || path.resolve(backing) !== path.resolve(file)) return;
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
