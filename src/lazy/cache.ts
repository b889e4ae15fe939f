import { type FileHandle, open, readFile, rm } from "node:fs/promises";
import path from "node:path";
import type { BlockIndex, ChunkRef, ChunkSource } from "../store/types.js";
import { writeFileAtomic } from "../util/atomic.js";
import type { KindlingHome } from "../util/home.js";
import { chunkAt, chunksIn } from "./chunkmap.js";
import { ChunkFetchError, fetchVerified, Limiter, sha256Hex } from "./fetch.js";
import { ByteLru } from "./lru.js";
import { PeerLocks } from "./peer.js";
import type { FetchPolicy, LazyStats } from "./types.js";

export interface CacheOptions {
  policy: FetchPolicy;
  memoryCacheBytes: number;
  fetchConcurrency: number;
  log?: (msg: string) => void;
}

type Loaded = { data: Buffer; fetched: boolean };

const MAX_FDS = 128;
/** How long a chunk that could not be fetched fails at once, without a new fetch. */
const FAILURE_TTL_MS = 2000;

/**
 * The read side of one lazy image: chunks come from memory, then from the on-disk chunk cache
 * ($KINDLING_HOME/blobs/sha256, shared by every image and container), then from the source,
 * verified before use. Concurrent loads of one digest share one promise.
 */
export class ChunkCache {
  readonly stats: LazyStats;
  private readonly lru: ByteLru<string>;
  private readonly inflight = new Map<string, Promise<Loaded>>();
  private readonly fds = new Map<string, FileHandle>();
  private readonly limiter: Limiter;
  private readonly wanted = new Map<string, number>();
  private readonly peers = new PeerLocks();
  /** Digests whose bytes this daemon has checked (cache files may be shared, or damaged). */
  private readonly verified = new Set<string>();
  private readonly failed = new Map<string, { err: unknown; until: number }>();

  constructor(
    private readonly home: KindlingHome,
    readonly index: BlockIndex,
    private readonly source: ChunkSource,
    private readonly opts: CacheOptions,
    digest: string,
  ) {
    this.lru = new ByteLru(opts.memoryCacheBytes);
    this.limiter = new Limiter(opts.fetchConcurrency);
    this.stats = {
      digest,
      blockSize: index.blockSize,
      bytesFetched: 0,
      chunksFetched: 0,
      bytesServed: 0,
      reads: 0,
      cacheHits: 0,
      cacheMisses: 0,
      fetchErrors: 0,
      verifyFailures: 0,
      readErrors: 0,
      readaheadChunks: 0,
      prefetch: { state: "pending", chunks: 0, bytes: 0 },
      updated: new Date().toISOString(),
    };
  }

  /**
   * Fills target with bytes [pos, pos+len) of the block image; returns how many (0 past EOF).
   * `whole` asks to pull whole chunks into memory (sequential readers); otherwise a small read of
   * a chunk on disk is a pread from a kept-open fd.
   */
  async read(target: Buffer, pos: number, len: number, whole: boolean): Promise<number> {
    const n = Math.max(0, Math.min(len, this.index.blockSize - pos));
    if (n === 0) return 0;
    this.stats.reads++;
    await Promise.all(chunksIn(this.index, pos, n).map((i) => this.copyChunk(i, target, pos, n, whole)));
    this.stats.bytesServed += n;
    return n;
  }

  /**
   * The fast path: when every chunk of the read is in memory, copy synchronously (no promise
   * hops between the FUSE thread's request and its answer). Returns -1 otherwise.
   */
  readFromMemory(target: Buffer, pos: number, len: number): number {
    const n = Math.max(0, Math.min(len, this.index.blockSize - pos));
    if (n === 0) return 0;
    const first = chunkAt(this.index, pos);
    const c = this.index.chunks[first];
    if (pos + n > c.offset + c.length) return -1; // spans chunks: rare, take the general path
    const mem = this.lru.get(c.digest);
    if (!mem) return -1;
    mem.copy(target, 0, pos - c.offset, pos - c.offset + n);
    this.stats.reads++;
    this.stats.cacheHits++;
    this.stats.bytesServed += n;
    return n;
  }

  private async copyChunk(i: number, target: Buffer, pos: number, n: number, whole: boolean): Promise<void> {
    const c = this.index.chunks[i];
    const start = Math.max(pos, c.offset);
    const end = Math.min(pos + n, c.offset + c.length);
    const dst = start - pos;
    const mem = this.lru.get(c.digest);
    if (mem) {
      this.stats.cacheHits++;
      mem.copy(target, dst, start - c.offset, end - c.offset);
      return;
    }
    if (!whole && end - start < c.length / 4 && this.verified.has(c.digest) && !this.inflight.has(c.digest)) {
      const fd = await this.fd(c);
      if (fd) {
        this.stats.cacheHits++;
        const { bytesRead } = await fd.read(target, dst, end - start, start - c.offset);
        if (bytesRead !== end - start) throw new Error(`short read of cached chunk ${c.digest}`);
        return;
      }
    }
    // Count this reader as waiting, so a queued background fetch of the chunk goes first.
    this.wanted.set(c.digest, (this.wanted.get(c.digest) ?? 0) + 1);
    let loaded: Loaded;
    try {
      loaded = await this.load(c);
    } finally {
      const n = this.wanted.get(c.digest)! - 1;
      if (n > 0) this.wanted.set(c.digest, n);
      else this.wanted.delete(c.digest);
    }
    const { data, fetched } = loaded;
    if (fetched) this.stats.cacheMisses++;
    else this.stats.cacheHits++;
    data.copy(target, dst, start - c.offset, end - c.offset);
  }

  /** An open fd of a chunk in the disk cache, or null if it is not there (or has the wrong size). */
  private async fd(c: ChunkRef): Promise<FileHandle | null> {
    const have = this.fds.get(c.digest);
    if (have) return have;
    let fh: FileHandle;
    try {
      fh = await open(this.home.blobPath(c.digest), "r");
    } catch {
      return null;
    }
    if ((await fh.stat()).size !== c.length) {
      await fh.close();
      return null;
    }
    const raced = this.fds.get(c.digest);
    if (raced) {
      await fh.close();
      return raced;
    }
    this.fds.set(c.digest, fh);
    if (this.fds.size > MAX_FDS) {
      const [k, old] = this.fds.entries().next().value as [string, FileHandle];
      this.fds.delete(k);
      // A read may still be using it: close a little later.
      setTimeout(() => void old.close().catch(() => {}), 5000).unref();
    }
    return fh;
  }

  /** Makes chunk i local (disk and memory) without serving it: readahead and prefetch. */
  async warm(i: number): Promise<boolean> {
    const c = this.index.chunks[i];
    if (this.lru.get(c.digest)) return false;
    const { fetched } = await this.load(c);
    return fetched;
  }

  private load(c: ChunkRef): Promise<Loaded> {
    let p = this.inflight.get(c.digest);
    if (p) return p;
    // The kernel retries a failed page read at once; answer it from the recent failure instead of
    // waiting out a second deadline.
    const failed = this.failed.get(c.digest);
    if (failed && failed.until > Date.now()) return Promise.reject(failed.err);
    this.failed.delete(c.digest);
    p = this.loadOnce(c)
      .catch((err) => {
        this.failed.set(c.digest, { err, until: Date.now() + FAILURE_TTL_MS });
        throw err;
      })
      .finally(() => this.inflight.delete(c.digest));
    this.inflight.set(c.digest, p);
    return p;
  }

  private async loadOnce(c: ChunkRef): Promise<Loaded> {
    const file = this.home.blobPath(c.digest);
    try {
      const data = await readFile(file);
      // The cache is shared by every image, container and worker of this home: check each
      // chunk once per daemon before serving it, and refetch one that went bad.
      if (
        data.length === c.length &&
        (this.verified.has(c.digest) || `sha256:${await sha256Hex(data)}` === c.digest)
      ) {
        this.verified.add(c.digest);
        this.lru.set(c.digest, data);
        return { data, fetched: false };
      }
      this.stats.verifyFailures++;
      this.opts.log?.(`cached chunk ${file} does not match its digest; fetching it again`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    // Another daemon may be fetching this chunk already: wait for its copy rather than fetch twice.
    const until = Date.now() + this.opts.policy.deadlineMs;
    const lock = path.join(path.dirname(file), `.fetch-${path.basename(file)}`);
    while (!(await this.peers.tryLock(lock))) {
      if (!(await this.peers.waitForPeer(lock, until))) {
        throw new ChunkFetchError(`chunk ${c.digest}: another daemon's fetch did not finish in time`);
      }
      const data = await readFile(file).catch(() => null);
      if (data?.length === c.length && `sha256:${await sha256Hex(data)}` === c.digest) {
        this.verified.add(c.digest);
        this.lru.set(c.digest, data);
        return { data, fetched: true };
      }
      // The peer failed (or its holder died): try to take the lock and fetch ourselves.
    }
    try {
      // A peer may have published it between our first look and taking the lock.
      const data = await readFile(file).catch(() => null);
      if (data?.length === c.length && `sha256:${await sha256Hex(data)}` === c.digest) {
        this.verified.add(c.digest);
        this.lru.set(c.digest, data);
        return { data, fetched: true };
      }
      return await this.fetchAndStore(c, file, until - Date.now());
    } finally {
      await rm(lock, { force: true });
    }
  }

  private async fetchAndStore(c: ChunkRef, file: string, deadlineMs: number): Promise<Loaded> {
    const policy = { ...this.opts.policy, deadlineMs: Math.max(1, deadlineMs) };
    const data = await fetchVerified(this.source, c, policy, this.limiter, {
      urgent: () => this.wanted.has(c.digest),
      onAttemptError: (err, verify) => {
        this.stats.fetchErrors++;
        if (verify) this.stats.verifyFailures++;
        this.opts.log?.(`fetch ${c.digest}: ${err instanceof Error ? err.message : String(err)}`);
      },
    });
    this.verified.add(c.digest);
    this.stats.chunksFetched++;
    this.stats.bytesFetched += data.length;
    this.lru.set(c.digest, data);
    // Only verified bytes reach the shared cache; a failed write still serves this reader.
    await writeFileAtomic(file, data).catch((err) => this.opts.log?.(`cache write ${file}: ${err}`));
    return { data, fetched: true };
  }

  async close(): Promise<void> {
    for (const fh of this.fds.values()) await fh.close().catch(() => {});
    this.fds.clear();
  }
}
