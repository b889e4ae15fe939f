import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { open } from "node:fs/promises";
import { PassThrough, type Readable } from "node:stream";
import { createGunzip } from "node:zlib";
import { KindlingError } from "../util/errors.js";

export type Compression = "gzip" | "zstd" | "xz" | "none";

/** Decides by magic bytes, not by media type or file name: both lie in the wild. */
export function detectCompression(head: Buffer): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return "gzip";
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return "zstd";
  if (head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])))
    return "xz";
  return "none";
}

/** A byte range of a file: a whole layer blob, or a member of an uncompressed outer tar. */
export interface FileRange {
  path: string;
  start?: number;
  /** Exclusive. */
  end?: number;
  /** "sha256:<hex>" of the (compressed) bytes, when known: checked as they are read. */
  digest?: string;
}

export interface OpenedLayer {
  compression: Compression;
  /** The decompressed tar stream. */
  stream: Readable;
  /** Resolves once the decompressor exited cleanly; rejects with what went wrong. */
  finished(): Promise<void>;
}

export async function readHead(range: FileRange): Promise<Buffer> {
  const fh = await open(range.path, "r");
  try {
    const want = Math.min(6, (range.end ?? Number.MAX_SAFE_INTEGER) - (range.start ?? 0));
    const b = Buffer.alloc(Math.max(want, 0));
    const { bytesRead } = await fh.read(b, 0, b.length, range.start ?? 0);
    return b.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/**
 * Opens a layer for reading, decompressed. `onRead` sees the compressed bytes (for progress).
 * gzip is decoded in-process; zstd and xz by their programs (Node 20 has neither).
 */
export async function openLayer(range: FileRange, onRead?: (n: number) => void): Promise<OpenedLayer> {
  const compression = detectCompression(await readHead(range));
  const raw = createReadStream(range.path, {
    start: range.start,
    end: range.end === undefined ? undefined : range.end - 1,
    highWaterMark: 1 << 20,
  });
  if (onRead) raw.on("data", (b) => onRead(b.length));
  const verified = verifyDigest(raw, range);
  const opened = await decompress(raw, range, compression);
  return {
    ...opened,
    finished: async () => {
      await opened.finished();
      await verified;
    },
  };
}

/** Resolves when `raw` ended with the expected digest (or none was given). */
function verifyDigest(raw: Readable, range: FileRange): Promise<void> {
  const m = /^sha256:([0-9a-f]{64})$/.exec(range.digest ?? "");
  if (!m) return Promise.resolve();
  const hash = createHash("sha256");
  raw.on("data", (b: Buffer) => hash.update(b));
  const p = new Promise<void>((resolve, reject) => {
    raw.on("end", () => {
      const got = hash.digest("hex");
      if (got === m[1]) resolve();
      else
        reject(new KindlingError(`layer ${range.digest} (${range.path}): content has digest sha256:${got}`));
    });
    raw.on("error", reject);
  });
  p.catch(() => {});
  return p;
}

async function decompress(raw: Readable, range: FileRange, compression: Compression): Promise<OpenedLayer> {
  if (compression === "none") {
    const done = new Promise<void>((resolve, reject) => {
      raw.on("end", resolve);
      raw.on("error", reject);
    });
    return { compression, stream: raw, finished: () => done };
  }
  if (compression === "gzip") {
    const gunzip = createGunzip();
    raw.on("error", (e) => gunzip.destroy(e));
    raw.pipe(gunzip);
    const done = new Promise<void>((resolve, reject) => {
      gunzip.on("end", resolve);
      gunzip.on("error", (e) => reject(new KindlingError(`layer ${range.path}: gzip: ${e.message}`)));
    });
    done.catch(() => {});
    return { compression, stream: gunzip, finished: () => done };
  }
  const tool = compression; // "zstd" or "xz": both decompress stdin to stdout with -dc
  const child = spawn(tool, tool === "zstd" ? ["-dc", "--no-progress"] : ["-dc"], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  const errs: Buffer[] = [];
  child.stderr.on("data", (d: Buffer) => errs.push(d));
  child.stdin.on("error", () => {});
  raw.pipe(child.stdin);
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  child.stdout.pipe(out);
  const done = new Promise<void>((resolve, reject) => {
    child.on("error", (e: NodeJS.ErrnoException) =>
      reject(e.code === "ENOENT" ? new KindlingError(`${tool} is not installed (run scripts/setup.sh)`) : e),
    );
    child.on("close", (code, signal) =>
      code === 0
        ? resolve()
        : reject(
            new KindlingError(
              `layer ${range.path}: ${tool} -d failed (${signal ?? code}): ${Buffer.concat(errs).toString().trim()}`,
            ),
          ),
    );
  });
  done.catch(() => {});
  return {
    compression,
    stream: out,
    finished: () => done,
  };
}
