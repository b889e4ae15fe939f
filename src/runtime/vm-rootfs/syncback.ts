/**
 * Writes to rw -v mounts of block-only strategies land in an ext4 drive; after the VM is gone they are
 * copied back to the host directories. This runs as the release of a `sync-back` resource, so it also
 * runs when the VM crashed, and (from owner.json, by cleanupStaleRuns) when kindling itself died.
 */
import { mkdir, rename, stat } from "node:fs/promises";
import path from "node:path";
import { unmount } from "../../host/mounts.js";
import { exec } from "../../util/exec.js";

export interface SyncTarget {
  /** Name of the mount's entry in the drive's root (a directory, or a file for a file mount). */
  entry: string;
  /** The host path of the -v source. */
  dest: string;
}

/**
 * Mounts `image` at `mountPoint` (the kernel replays the ext4 journal of a guest that crashed), copies each
 * entry back with `rsync -a --delete` (what the container deleted is deleted on the host), unmounts.
 * Idempotent: a mount left by a sync that died is unmounted first, and a second sync copies nothing new.
 */
export async function syncBack(image: string, mountPoint: string, targets: SyncTarget[]): Promise<void> {
  if (!(await stat(image).catch(() => null))) return; // never made, or already synced and removed
  try {
    await copyBack(image, mountPoint, targets);
  } catch (err) {
    // The run dir is removed after its resources: keep the writes out of its way, and say where.
    const kept = path.join(
      path.dirname(image),
      "..",
      "..",
      "rescued",
      `${path.basename(path.dirname(image))}-${path.basename(image)}`,
    );
    await unmount(mountPoint).catch(() => {});
    await mkdir(path.dirname(kept), { recursive: true });
    await rename(image, kept);
    throw new Error(
      `${(err as Error).message}; the rw mounts' contents are kept in ${path.resolve(kept)} (ext4 image, entry <i> = mount i)`,
    );
  }
}

async function copyBack(image: string, mountPoint: string, targets: SyncTarget[]): Promise<void> {
  await unmount(mountPoint);
  await mkdir(mountPoint, { recursive: true });
  // -o loop: the loop device is set to autoclear, so unmounting frees it (also after a crash)
  await exec("mount", ["-t", "ext4", "-o", "loop,noatime", image, mountPoint]);
  try {
    // A few at a time: with many small mounts the cost is rsync's start-up, not the copying.
    const queue = [...targets];
    const worker = async () => {
      for (let t = queue.shift(); t; t = queue.shift()) {
        const from = path.join(mountPoint, t.entry);
        const isDir = (await stat(from)).isDirectory();
        await exec("rsync", ["-aHAX", "--delete", isDir ? `${from}/` : from, isDir ? `${t.dest}/` : t.dest]);
      }
    };
    // all settle before the unmount below; then the first failure is reported (the sync is retried later)
    const results = await Promise.allSettled(Array.from({ length: Math.min(4, targets.length) }, worker));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
  } finally {
    await unmount(mountPoint);
  }
}
