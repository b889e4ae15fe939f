import { statfs } from "node:fs/promises";
import path from "node:path";
import { DEFAULT_BLOCK_COMPRESSION, hostEnv } from "../config/index.js";
import { KindlingError } from "../util/errors.js";
import { exec } from "../util/exec.js";

/** How the block image is compressed; chosen by measurement (docs/image-pipeline.md, bench/compressors.ts). */
export interface SquashfsOptions {
  compressor: "zstd" | "gzip" | "lz4" | "xz" | "lzo" | "none";
  /** -Xcompression-level (zstd, gzip). */
  level?: number;
  /** lz4's high-compression mode (-Xhc). */
  hc?: boolean;
  /** Data block size in bytes (mksquashfs -b). */
  blockSize?: number;
  /** More mksquashfs flags (e.g. -no-fragments), for measurements. */
  extraArgs?: string[];
}

/**
 * The options a compression setting names (KINDLING_BLOCK_COMPRESSION, `image import --compression`):
 * `zstd[:level]`, `lz4`, `lz4:hc`, `gzip[:level]`, `xz`, `lzo`, `none`; 128 KiB blocks. The config
 * checked the grammar; a word it does not know here is a programming error.
 */
export function squashfsOptions(spec: string): SquashfsOptions {
  const [name, arg] = spec.split(":");
  const blockSize = 128 * 1024;
  switch (name) {
    case "zstd":
    case "gzip":
      return { compressor: name, level: arg ? Number(arg) : undefined, blockSize };
    case "lz4":
      return arg === "hc" ? { compressor: "lz4", hc: true, blockSize } : { compressor: "lz4", blockSize };
    case "xz":
    case "lzo":
    case "none":
      return { compressor: name, blockSize };
    default:
      throw new KindlingError(`unknown block image compression ${JSON.stringify(spec)}`);
  }
}

/** The setting's default (src/config/settings.ts): what an image is built with unless told otherwise. */
export const DEFAULT_SQUASHFS: SquashfsOptions = squashfsOptions(DEFAULT_BLOCK_COMPRESSION);

/** The mksquashfs arguments for `opts`; shared by the builder and the benchmark. */
export function mksquashfsArgs(src: string, out: string, opts: SquashfsOptions = DEFAULT_SQUASHFS): string[] {
  const args = [
    src,
    out,
    "-noappend",
    // Determinism: a fixed filesystem time, and the same layout whatever the machine.
    "-mkfs-time",
    "0",
    "-processors",
    "2",
    "-no-progress",
    "-quiet",
    "-b",
    String(opts.blockSize ?? 128 * 1024),
  ];
  args.push(...(opts.extraArgs ?? []));
  if (opts.compressor === "none") args.push("-noI", "-noD", "-noF", "-noX");
  else {
    args.push("-comp", opts.compressor);
    if (opts.hc) args.push("-Xhc");
    if (opts.level !== undefined) args.push("-Xcompression-level", String(opts.level));
  }
  return args;
}

/**
 * Builds a deterministic SquashFS image of `src`: the same tree (contents, owners, modes, mtimes,
 * xattrs) gives the same bytes. mtimes are kept from the layers; only the superblock time is fixed.
 */
export async function buildSquashfs(
  src: string,
  out: string,
  opts: SquashfsOptions = DEFAULT_SQUASHFS,
): Promise<void> {
  try {
    // SOURCE_DATE_EPOCH would override every file's mtime (and clash with -mkfs-time): not ours to take.
    const { SOURCE_DATE_EPOCH: _ignored, ...env } = hostEnv();
    await exec("mksquashfs", mksquashfsArgs(src, out, opts), { env });
  } catch (err) {
    throw new KindlingError(`building the block image failed: ${await mksquashfsProblem(err, out)}`);
  }
}

/**
 * mksquashfs's own reason, not its whole stderr: the "FATAL ERROR: ..." line, and on a full file
 * system (it prints only "Failed to write to output filesystem") that the disk is full.
 */
async function mksquashfsProblem(err: unknown, out: string): Promise<string> {
  const text = (err as Error).message;
  const fatal = /FATAL ERROR: ?([^\n]*)/.exec(text)?.[1]?.trim();
  if (!fatal) return text;
  const fs = await statfs(path.dirname(out)).catch(() => null);
  const full = /No space left/i.test(text) || fs?.bavail === 0;
  return full
    ? `no space left on the file system of ${path.dirname(out)} (mksquashfs: ${fatal})`
    : `mksquashfs: ${fatal}`;
}
