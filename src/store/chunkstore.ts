import { type FileHandle, open, readdir, readFile, rm, unlink } from "node:fs/promises";
import path from "node:path";
import { writeFileAtomic } from "../util/atomic.js";
import type { KindlingHome } from "../util/home.js";
import { FetchLocks } from "./fetchlock.js";
import type { ChunkRef } from "./types.js";
import { isChunkSync } from "./verify.js";

/** What the store tier counts (a lazy daemon's stats embed these). */
export interface StoreCounters {
  /** Copies (in blobs/ or from a source) whose bytes did not match their digest. */
  verifyFailures: number;
  /** Verified chunks that could not be written to blobs/ (served anyway). */
  cacheWriteErrors: number;
  /** Why the last write failed for want of space, until a write succeeds again. */
  cacheFull?: string;
}

/** Publishes a chunk fetched under a ChunkStore.add(): exactly one of commit or abort. */
export interface ChunkWriter {
  /** Writes verified bytes to blobs/ (atomically); false if the write failed (the caller serves them anyway). */
  commit(data: Buffer): Promise<boolean>;
  abort(): Promise<void>;
}

const MAX_FDS = 128;
const NO_SPACE = new Set(["ENOSPC", "EDQUOT", "EROFS", "EFBIG"]);

/**
 * The store tier of chunk reads ($KINDLING_HOME/blobs/sha256, shared by every image, container and
 * process of a home), shaped like stargz-snapshotter's BlobCache: get a chunk, or add one (take the
 * cross-process fetch lock, then commit or abort). It owns chunk writes to blobs/, their
 * verification (each copy checked once per process before it is served) and the fetch locks.
 */
export class ChunkStore {
  readonly counters: StoreCounters;
  private readonly verified = new Set<string>();
  private readonly fds = new Map<string, FileHandle>();
  private readonly locks = new FetchLocks();

  constructor(
    readonly home: KindlingHome,
    private readonly log?: (msg: string) => void,
    counters?: StoreCounters,
  ) {
    this.counters = counters ?? { verifyFailures: 0, cacheWriteErrors: 0 };
  }

  /** Whether this process has checked the copy in blobs/ (so a pread of it may be trusted). */
  isVerified(digest: string): boolean {
    return this.verified.has(digest);
  }

  /** The chunk's verified bytes from blobs/, or null if absent (or bad: then it is fetched again). */
  async get(ref: Pick<ChunkRef, "digest" | "length">): Promise<Buffer | null> {
    const file = this.home.blobPath(ref.digest);
    let data: Buffer;
    try {
      data = await readFile(file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return null;
      throw err;
    }
    if (data.length === ref.length && (this.verified.has(ref.digest) || isChunkSync(ref, data))) {
      this.verified.add(ref.digest);
      return data;
    }
    this.counters.verifyFailures++;
    this.log?.(`cached chunk ${file} does not match its digest; fetching it again`);
    return null;
  }

  /** An open fd of a verified chunk in blobs/, or null (not there, or the wrong size). */
  async fd(ref: Pick<ChunkRef, "digest" | "length">): Promise<FileHandle | null> {
    const have = this.fds.get(ref.digest);
    if (have) return have;
    let fh: FileHandle;
    try {
      fh = await open(this.home.blobPath(ref.digest), "r");
    } catch {
      return null;
    }
    if ((await fh.stat()).size !== ref.length) {
      await fh.close();
      return null;
    }
    const raced = this.fds.get(ref.digest);
    if (raced) {
      await fh.close();
      return raced;
    }
    this.fds.set(ref.digest, fh);
    if (this.fds.size > MAX_FDS) {
      const [k, old] = this.fds.entries().next().value as [string, FileHandle];
      this.fds.delete(k);
      // A read may still be using it: close a little later.
      setTimeout(() => void old.close().catch(() => {}), 5000).unref();
    }
    return fh;
  }

  /**
   * Starts adding a chunk: returns its bytes if another process published it meanwhile (it waits
   * for a live peer that is fetching it, up to `until`), else a writer holding the fetch lock.
   * A home with no room for the lock file still gets a writer (without the lock): the fetch and
   * the read must not fail because the cache cannot grow.
   */
  async add(ref: Pick<ChunkRef, "digest" | "length">, until: number): Promise<Buffer | ChunkWriter> {
    const file = this.home.blobPath(ref.digest);
    const lock = path.join(path.dirname(file), `.fetch-${path.basename(file)}`);
    for (;;) {
      let locked: boolean;
      try {
        locked = await this.locks.tryLock(lock);
      } catch (err) {
        if (!NO_SPACE.has((err as NodeJS.ErrnoException).code ?? "")) throw err;
        this.noteWriteError(err);
        return this.writer(ref.digest, undefined);
      }
      if (locked) {
        // A peer may have published it between our caller's look and taking the lock.
        const data = await this.peerCopy(ref);
        if (data) {
          await unlinkQuiet(lock);
          return data;
        }
        return this.writer(ref.digest, lock);
      }
      if (!(await this.locks.waitForPeer(lock, until))) {
        throw new Error(`chunk ${ref.digest}: another process's fetch did not finish in time`);
      }
      const data = await this.peerCopy(ref);
      if (data) return data;
      // The peer failed (or its holder died): try to take the lock and fetch ourselves.
    }
  }

  private async peerCopy(ref: Pick<ChunkRef, "digest" | "length">): Promise<Buffer | null> {
    const data = await readFile(this.home.blobPath(ref.digest)).catch(() => null);
    if (data && isChunkSync(ref, data)) {
      this.verified.add(ref.digest);
      return data;
    }
    return null;
  }

  private writer(digest: string, lock: string | undefined): ChunkWriter {
    const file = this.home.blobPath(digest);
    const unlock = async () => {
      if (lock) await unlinkQuiet(lock);
    };
    return {
      commit: async (data) => {
        try {
          // Only verified bytes reach the shared cache (the caller checked them).
          await writeFileAtomic(file, data);
          this.verified.add(digest);
          this.counters.cacheFull = undefined;
          return true;
        } catch (err) {
          this.noteWriteError(err);
          return false;
        } finally {
          await unlock();
        }
      },
      abort: unlock,
    };
  }

  /**
   * A writer without the cross-process fetch lock, for chunks fetched many per request (a pack
   * range): the lock costs ~6 file operations per chunk; without it, two daemons of one image may
   * both fetch a chunk (each publishes the same verified bytes atomically), never a wrong byte.
   */
  unlockedWriter(ref: Pick<ChunkRef, "digest">): ChunkWriter {
    return this.writer(ref.digest, undefined);
  }

  private noteWriteError(err: unknown): void {
    this.counters.cacheWriteErrors++;
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (NO_SPACE.has(code)) {
      this.counters.cacheFull = `the chunk cache ${this.home.blobs} is full (${code}): chunks are served but not kept`;
    }
    this.log?.(`cache write: ${err instanceof Error ? err.message : err}`);
  }

  async close(): Promise<void> {
    for (const fh of this.fds.values()) await fh.close().catch(() => {});
    this.fds.clear();
  }
}

/** unlink, where a missing file is fine (cheaper than rm's lstat first). */
async function unlinkQuiet(file: string): Promise<void> {
  await unlink(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== "ENOENT") throw err;
  });
}

/** Half-written chunks (writeFileAtomic temp files) and fetch locks a dead process left in blobs/. */
export async function removeChunkLeftovers(home: KindlingHome, pid: number): Promise<void> {
  const marker = `-${pid}-`;
  for (const name of await readdir(home.blobs).catch(() => [] as string[])) {
    const file = path.join(home.blobs, name);
    if (name.startsWith(".tmp-") && name.includes(marker)) await rm(file, { force: true });
    else if (name.startsWith(".fetch-")) {
      const holder = await readFile(file, "utf8").catch(() => "");
      if (holder.split(" ")[0] === String(pid)) await rm(file, { force: true });
    }
  }
}
