import { constants } from "node:fs";
import { createRequire } from "node:module";
import type { ChunkCache } from "./cache.js";
import type { StartupRanges } from "./ranges.js";
import type { Readahead } from "./readahead.js";
import type { ReadTracer } from "./trace.js";

type Cb = (...args: unknown[]) => void;
interface FuseInstance {
  mount(cb: (err: Error | null) => void): void;
}
interface FuseCtor {
  new (
    mnt: string,
    ops: Record<string, (...args: never[]) => void>,
    opts: Record<string, unknown>,
  ): FuseInstance;
  ENOENT: number;
  EIO: number;
  EROFS: number;
}

// fuse-native is CommonJS without types; this is the subset we use.
const Fuse = createRequire(import.meta.url)("fuse-native") as FuseCtor;

export interface FuseFileOptions {
  mountpoint: string;
  fileName: string;
  cache: ChunkCache;
  readahead: Readahead;
  /** Told of every read (startup profile recording, file-aware readahead). */
  onRead?: (pos: number, len: number) => void;
  /** Times reads that wait for a chunk (trace.ts). */
  tracer?: ReadTracer;
  /** Backstop for a read that never answers (our own deadline should always come first). */
  opTimeoutMs: number;
  /** Let the kernel keep the file's pages (KINDLING_LAZY_KERNEL_CACHE; off only for measuring). */
  kernelCache: boolean;
  /** Mount with direct_io (KINDLING_LAZY_DIRECT_IO; measuring only). */
  directIo: boolean;
  /** Called after a read was answered with EIO (see LowerMounts). */
  onReadError?(): void;
  /** The image's startup ranges (ranges.ts): a read inside one is served from it, not from chunks. */
  ranges?: StartupRanges;
  log(msg: string): void;
}

/**
 * Mounts a FUSE filesystem holding one read-only file, the block image. The file never changes,
 * so the kernel may keep its pages (kernel_cache) and attributes: warm reads then never reach us.
 */
export function mountBlockFile(o: FuseFileOptions): Promise<void> {
  const file = `/${o.fileName}`;
  const size = o.cache.index.blockSize;
  const now = new Date();
  const dirStat = { mode: 0o40555, size: 4096, nlink: 2, uid: 0, gid: 0, mtime: now, atime: now, ctime: now };
  const fileStat = {
    mode: 0o100444,
    size,
    nlink: 1,
    uid: 0,
    gid: 0,
    blksize: 4096,
    blocks: Math.ceil(size / 512),
    mtime: now,
    atime: now,
    ctime: now,
  };
  const ops = {
    getattr(p: string, cb: Cb) {
      if (p === "/") cb(null, dirStat);
      else if (p === file) cb(null, fileStat);
      else cb(Fuse.ENOENT);
    },
    readdir(p: string, cb: Cb) {
      if (p === "/") cb(0, [o.fileName]);
      else cb(Fuse.ENOENT);
    },
    open(p: string, flags: number, cb: Cb) {
      if (p !== file) return cb(Fuse.ENOENT);
      if ((flags & 3) !== constants.O_RDONLY) return cb(Fuse.EROFS);
      cb(0, 1);
    },
    release(_p: string, _fd: number, cb: Cb) {
      cb(0);
    },
    read(p: string, _fd: number, buf: Buffer, len: number, pos: number, cb: Cb) {
      if (p !== file) return cb(Fuse.ENOENT);
      const ranged = o.ranges?.serve(buf, pos, len);
      if (typeof ranged === "number") {
        o.onRead?.(pos, len);
        o.tracer?.read();
        return cb(ranged);
      }
      if (ranged) {
        const answered = o.tracer?.slowRead();
        ranged.then((n) => {
          answered?.();
          if (n >= 0) {
            o.onRead?.(pos, len);
            cb(n);
          } else viaChunks(buf, len, pos, cb); // the range failed: the chunk path
        });
        return;
      }
      viaChunks(buf, len, pos, cb);
    },
  };
  // The chunk path: readahead, the memory tier, then the loader (store tier, fetcher).
  const viaChunks = (buf: Buffer, len: number, pos: number, cb: Cb) => {
    const seq = o.readahead.observe(pos, len);
    o.onRead?.(pos, len);
    const fast = o.cache.readFromMemory(buf, pos, len);
    if (fast >= 0) {
      o.tracer?.read();
      return cb(fast);
    }
    const answered = o.tracer?.slowRead();
    o.cache.read(buf, pos, len, seq).then(
      (n) => {
        answered?.();
        cb(n);
      },
      (err) => {
        answered?.();
        o.cache.stats.readErrors++;
        o.log(`read ${len}@${pos}: ${err instanceof Error ? err.message : err}`);
        cb(Fuse.EIO);
        o.onReadError?.();
      },
    );
  };
  const opts: Record<string, unknown> = {
    timeout: o.opTimeoutMs,
    allowOther: true,
    kernelCache: o.kernelCache,
    attrTimeout: 3600,
    entryTimeout: 3600,
    // fuse-native passes only known options; fsname is the one free-form slot, so an extra
    // option (direct_io, for measuring) rides along after a comma.
    fsname: o.directIo ? "kindling,direct_io" : "kindling",
    subtype: "kindling",
  };
  const fuse = new Fuse(o.mountpoint, ops, opts);
  return new Promise((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
}
