import { mkdir, stat } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { exec } from "../util/exec.js";
import { lazyUnmount, mountAt } from "./mountinfo.js";

/** Where a daemon (directory mnt/<id>) mounts its image's SquashFS. */
export const lowerDirOf = (daemonDir: string): string => path.join(daemonDir, "lower");

/**
 * The image's SquashFS mounted read-only from a daemon's own lazy file, for the lower layer of
 * runc/runsc overlays: one loop device and one mount per image, shared by every container of it,
 * instead of one of each per container. The daemon that serves the file owns the mount.
 */
export async function mountLower(file: string, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const loop = (await exec("losetup", ["-r", "--direct-io=on", "--show", "-f", file])).stdout.trim();
  try {
    await exec("mount", ["-t", "squashfs", "-o", "ro", loop, dir]);
  } catch (err) {
    await exec("losetup", ["-d", loop], { allowFailure: true });
    throw err;
  }
  // Autoclear: from now on the loop device goes away with the mount.
  await exec("losetup", ["-d", loop], { allowFailure: true });
}

/**
 * Unmounts it: at once when no overlay uses it, else detached (it goes with its last overlay).
 * Waits until the loop device is released, so a caller that checks for leftovers sees none.
 */
export async function unmountLower(dir: string): Promise<void> {
  const m = await mountAt(dir);
  if (!m) return;
  const r = await exec("umount", [dir], { allowFailure: true });
  if (r.code !== 0) {
    await lazyUnmount(dir);
    return;
  }
  const loop = path.basename(m.source);
  if (!/^loop\d+$/.test(loop)) return;
  for (let waited = 0; waited < 2000; waited += 10) {
    const attached = await stat(`/sys/block/${loop}/loop/backing_file`).then(
      () => true,
      () => false,
    );
    if (!attached) return;
    await sleep(10);
  }
}
