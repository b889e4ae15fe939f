/** A file system's backing device info (bdi) in sysfs: the kernel's readahead for its files. */
import { stat, writeFile } from "node:fs/promises";
import { devNumbers } from "./loop.js";

/**
 * Sets the readahead of the file system mounted at `mountpoint` (its bdi's read_ahead_kb), e.g. a
 * FUSE mount, whose bdi starts at the 128 KiB the kernel offered in FUSE_INIT. Root only.
 */
export async function setMountReadahead(mountpoint: string, bytes: number): Promise<void> {
  const { major, minor } = devNumbers((await stat(mountpoint, { bigint: true })).dev);
  await writeFile(`/sys/class/bdi/${major}:${minor}/read_ahead_kb`, `${Math.ceil(bytes / 1024)}\n`);
}
