/** Building the per-run images: SquashFS and ext4 files made from a directory (async exec only). */
import { open } from "node:fs/promises";
import { exec } from "../../util/exec.js";

/** The design note's mksquashfs flags, exactly (zstd at its default level 15). */
export const NOTE_SQUASHFS_FLAGS = ["-comp", "zstd", "-noappend", "-no-recovery", "-always-use-fragments"];
/** For the -v packs: uncompressed, the data is read once by one guest; compressing it only costs time. */
export const PACK_SQUASHFS_FLAGS = [
  "-noappend",
  "-no-recovery",
  "-noI",
  "-noD",
  "-noF",
  "-noX",
  "-no-progress",
];

export async function mksquashfs(dir: string, file: string, flags: string[]): Promise<void> {
  await exec("mksquashfs", [dir, file, ...flags, "-quiet"]);
}

/** Bytes and inodes of `paths` together (du counts a hardlinked inode once). */
export async function treeUsage(paths: string | string[]): Promise<{ bytes: number; inodes: number }> {
  const list = typeof paths === "string" ? [paths] : paths;
  const total = (out: string) => Number(out.trim().split("\n").at(-1)!.split(/\s/)[0]);
  const [b, i] = await Promise.all([
    exec("du", ["-s", "-c", "-B1", ...list]),
    exec("du", ["-s", "-c", "--inodes", ...list]),
  ]);
  return { bytes: total(b.stdout), inodes: total(i.stdout) };
}

/**
 * An ext4 image sized to fit `usage` with headroom: 20% + 64 MiB of space (ext4's own metadata, the
 * journal, and room to write), and twice the inodes plus 1024. The file is sparse: unused space costs nothing.
 */
export function ext4Size(
  usage: { bytes: number; inodes: number },
  extraBytes = 0,
): { bytes: number; inodes: number } {
  const mib = 1 << 20;
  const bytes = Math.ceil((usage.bytes * 1.2 + 64 * mib + extraBytes) / mib) * mib;
  return { bytes, inodes: usage.inodes * 2 + 1024 };
}

/** A sparse file of `bytes`. */
export async function sparseFile(file: string, bytes: number): Promise<void> {
  const fh = await open(file, "w");
  try {
    await fh.truncate(bytes);
  } finally {
    await fh.close();
  }
}

/**
 * mkfs.ext4 arguments (before the file name): filled from `fromDir` when given (-d copies the tree: ownership,
 * modes, xattrs, hardlinks); a small journal where the guest writes (its crash must leave a consistent file
 * system to sync back), none for a root that is only ever mounted read-only.
 */
export function ext4Args(size: { inodes?: number }, opts: { fromDir?: string; journal: boolean }): string[] {
  const args = ["-q", "-F", "-t", "ext4", "-m", "0"];
  args.push(...(opts.journal ? ["-J", "size=4"] : ["-O", "^has_journal"]));
  if (size.inodes) args.push("-N", String(size.inodes));
  if (opts.fromDir) args.push("-d", opts.fromDir);
  return args;
}

/** mkfs.ext4 into a sparse file of size.bytes (see ext4Args). */
export async function mkfsExt4(
  file: string,
  size: { bytes: number; inodes?: number },
  opts: { fromDir?: string; journal: boolean },
): Promise<void> {
  await sparseFile(file, size.bytes);
  await exec("mkfs.ext4", [...ext4Args(size, opts), file]);
}

/** `--disk 2G`-style sizes: bytes, or a number with K/M/G/T (powers of 1024). */
export function parseSize(s: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)i?B?$/i.exec(s.trim());
  if (!m) return undefined;
  const mult = { "": 1, K: 1 << 10, M: 1 << 20, G: 1 << 30, T: 2 ** 40 }[m[2].toUpperCase() as "" | "K"];
  return Math.floor(Number(m[1]) * (mult ?? 1));
}
