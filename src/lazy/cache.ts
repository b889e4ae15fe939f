import type { ChunkLoader, Loaded } from "../chunks/loader.js";
import type { BlockIndex } from "../store/types.js";
import { chunkAt, chunksIn } from "./chunkmap.js";
import { ByteLru } from "./lru.js";
import type { LazyStats } from "./types.js";

/**
 * The read side of one lazy image: the memory tier (hot chunks, LRU) over the chunk loader (store
 * tier in blobs/, then the fetcher). Maps byte ranges of the block image to chunks.
 */
export class ChunkCache {
  private readonly lru: ByteLru<string>;
  /** Readers waiting per digest, so a queued background fetch of the chunk goes first. */
  private readonly wanted = new Map<string, number>();

  constructor(
    readonly index: BlockIndex,
    private readonly loader: ChunkLoader,
    readonly stats: LazyStats,
    memoryCacheBytes: number,
  ) {
    this.lru = new ByteLru(memoryCacheBytes);
  }

  /**
   * Fills target with bytes [pos, pos+len) of the block image; returns how many (0 past EOF).
   * `whole` asks to pull whole chunks into memory (sequential readers); otherwise a small read of
   * a chunk on disk is a pread from a kept-open fd. `reader` false: the daemon's own read (tables,
   * layout), not counted as served.
   */
  async read(target: Buffer, pos: number, len: number, whole: boolean, reader = true): Promise<number> {
    const n = Math.max(0, Math.min(len, this.index.blockSize - pos));
    if (n === 0) return 0;
    if (reader) this.stats.reads++;
    await Promise.all(chunksIn(this.index, pos, n).map((i) => this.copyChunk(i, target, pos, n, whole)));
    if (reader) this.stats.bytesServed += n;
    return n;
  }

  /**
   * The fast path: when every chunk of the read is in memory, copy synchronously (no promise
   * hops between the FUSE thread's request and its answer). Returns -1 otherwise.
   */
  readFromMemory(target: Buffer, pos: number, len: number): number {
    const n = Math.max(0, Math.min(len, this.index.blockSize - pos));
    if (n === 0) return 0;
    const chunks = this.index.chunks;
    const first = chunkAt(this.index, pos);
    // A read may span chunks (a 128 KiB request over ~128 KiB chunks mostly does): all in memory?
    let last = first;
    while (chunks[last].offset + chunks[last].length < pos + n) last++;
    for (let i = first; i <= last; i++) if (!this.lru.has(chunks[i].digest)) return -1;
    for (let i = first; i <= last; i++) {
      const c = chunks[i];
      const start = Math.max(pos, c.offset);
      const end = Math.min(pos + n, c.offset + c.length);
      this.lru.get(c.digest)!.copy(target, start - pos, start - c.offset, end - c.offset);
    }
    this.stats.reads++;
    this.stats.cacheHits += last - first + 1;
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
    const store = this.loader.store;
    if (
      !whole &&
      end - start < c.length / 4 &&
      store.isVerified(c.digest) &&
      !this.loader.isLoading(c.digest)
    ) {
      const fd = await store.fd(c);
      if (fd) {
        this.stats.cacheHits++;
        const { bytesRead } = await fd.read(target, dst, end - start, start - c.offset);
        if (bytesRead !== end - start) throw new Error(`short read of cached chunk ${c.digest}`);
        return;
      }
    }
    this.wanted.set(c.digest, (this.wanted.get(c.digest) ?? 0) + 1);
    let loaded: Loaded;
    try {
      loaded = await this.load(i);
    } finally {
      const left = this.wanted.get(c.digest)! - 1;
      if (left > 0) this.wanted.set(c.digest, left);
      else this.wanted.delete(c.digest);
    }
    if (loaded.fetched) this.stats.cacheMisses++;
    else this.stats.cacheHits++;
    loaded.data.copy(target, dst, start - c.offset, end - c.offset);
  }

  private async load(i: number): Promise<Loaded> {
    const c = this.index.chunks[i];
    const loaded = await this.loader.load(c, () => this.wanted.has(c.digest));
    this.lru.set(c.digest, loaded.data);
    return loaded;
  }

  /** Whether the memory tier holds this chunk. */
  inMemory(digest: string): boolean {
    return this.lru.has(digest);
  }

  /** Whether a reader waits for this chunk now. */
  isWanted(digest: string): boolean {
    return this.wanted.has(digest);
  }

  /** Keeps chunk i's verified bytes in the memory tier (a pack fetch delivered them). */
  keep(i: number, data: Buffer): void {
    this.lru.set(this.index.chunks[i].digest, data);
  }

  /** Makes chunk i local (disk and memory) without serving it: readahead and prefetch. */
  async warm(i: number): Promise<boolean> {
    const c = this.index.chunks[i];
    if (this.lru.get(c.digest)) return false;
    return (await this.load(i)).fetched;
  }

  close(): Promise<void> {
    return this.loader.store.close();
  }
}
