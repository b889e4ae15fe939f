import type { PackLoader } from "../chunks/packloader.js";
import type { ChunkCache } from "./cache.js";
import { chunkAt } from "./chunkmap.js";

/**
 * Reads within this distance of the furthest end of the run so far still count as one run (plus
 * the kernel's readahead on the file: it sends a window's requests at once, from several threads).
 */
const SLACK = 256 << 10;
/**
 * Bytes a run must cover before readahead starts. A mount's superblock probe or a metadata walk
 * also reads a few blocks in a row; fetching chunks ahead of those only inflates what a first
 * run downloads (measured: 2.8% instead of 0.9% of an image for `cat /etc/debian_version`).
 */
const TRIGGER = 1 << 20;
/**
 * With packs: what is kept requested ahead of a sequential reader: the same `window` chunks as the
 * path without packs (as one ranged request) until its run covers GROW_AFTER, then a quarter of
 * the run in bytes, up to PACK_WINDOW. A long `cat` streams, while the short runs of a program's
 * start fetch what they did before (a byte window growing from the first MiB fetched 33 instead of
 * 25 MB on a cold `import numpy`)...
 */
const PACK_WINDOW = 16 << 20;
const GROW_AFTER = 4 << 20;
/** ...in ranged requests of at most this many bytes each (several in flight). */
const PACK_BATCH = 4 << 20;

/**
 * Detects sequential reading and warms the next chunks in the background. Reads arrive from
 * several FUSE threads (and a loop device issues them in parallel), so "sequential" tolerates
 * small reorderings. With an image's pack segments (chunks/packs.ts) it streams: it keeps
 * PACK_WINDOW bytes requested ahead of the reader as ranged requests of PACK_BATCH bytes, instead
 * of one request per chunk.
 */
export class Readahead {
  private nextPos = -1;
  private streak = 0;
  private runBytes = 0;
  private readonly warming = new Set<number>();
  /** The chunk the last readahead started from: one decision per chunk, not per read. */
  private lastFrom = -1;
  /** With packs: the last chunk requested ahead of this run. */
  private requestedTo = -1;

  private readonly slack: number;
  private readonly kernelReadahead: number;

  constructor(
    private readonly cache: ChunkCache,
    private readonly window: number,
    private readonly log: (msg: string) => void,
    private readonly packs?: PackLoader,
    /** The kernel's readahead on the file (bytes): how far apart a window's requests may arrive. */
    kernelReadahead = 0,
  ) {
    this.slack = SLACK + kernelReadahead;
    this.kernelReadahead = kernelReadahead;
  }

  /** Records a read; returns whether the reader looks sequential. */
  observe(pos: number, len: number): boolean {
    const seq = this.nextPos >= 0 && Math.abs(pos - this.nextPos) <= this.slack;
    this.streak = seq ? this.streak + 1 : 0;
    this.runBytes = seq ? this.runBytes + len : len;
    this.nextPos = seq ? Math.max(this.nextPos, pos + len) : pos + len;
    if (this.runBytes >= TRIGGER && this.window > 0) this.ahead(this.nextPos);
    return this.streak >= 2;
  }

  private ahead(from: number): void {
    const first = chunkAt(this.cache.index, Math.min(from, this.cache.index.blockSize - 1));
    if (first < 0 || first === this.lastFrom) return;
    this.lastFrom = first;
    if (this.packs?.hasSegments) {
      const grown = this.runBytes < GROW_AFTER ? 0 : Math.min(PACK_WINDOW, this.runBytes / 4);
      // The kernel's window grows about as the run does, up to its readahead: stay a window ahead.
      this.stream(first, Math.max(grown, Math.min(this.kernelReadahead, this.runBytes)));
      return;
    }
    const last = Math.min(first + this.window, this.cache.index.chunks.length - 1);
    for (let i = first + 1; i <= last; i++) {
      if (this.warming.has(i)) continue;
      this.warming.add(i);
      this.cache
        .warm(i)
        .then((fetched) => {
          if (fetched) this.cache.stats.readaheadChunks++;
        })
        .catch((err) => this.log(`readahead of chunk ${i}: ${err instanceof Error ? err.message : err}`))
        .finally(() => this.warming.delete(i));
    }
  }

  /** Tops up the ranged requests ahead of a reader at chunk `at`: `window` bytes, or (0) `this.window` chunks. */
  private stream(at: number, window: number): void {
    const chunks = this.cache.index.chunks;
    // A reader that moved elsewhere starts a new window (from chunk `at` itself: with kernel
    // readahead, `at` is the furthest read so far, not the one waited on). One that only got ahead
    // of the requests (a readahead window's furthest request came first) has the gap filled.
    const moved =
      this.requestedTo < 0 ||
      chunks[at].offset - chunks[this.requestedTo].offset > this.slack ||
      chunks[this.requestedTo].offset - chunks[at].offset > 2 * PACK_WINDOW;
    if (moved) this.requestedTo = at - 1;
    const last = Math.min(at + this.window, chunks.length - 1);
    const until = window > 0 ? chunks[at].offset + chunks[at].length + window : chunks[last].offset + 1;
    // Top up only once half the window is used: fewer, larger requests.
    const half =
      window > 0 ? chunks[at].offset + window / 2 : chunks[Math.min(at + (this.window >> 1), last)].offset;
    if (this.requestedTo > at && chunks[this.requestedTo].offset > half) return;
    while (this.requestedTo + 1 < chunks.length && chunks[this.requestedTo + 1].offset < until) {
      const a = this.requestedTo + 1;
      let b = a;
      // One request: up to `until`, at most PACK_BATCH bytes.
      while (
        b + 1 < chunks.length &&
        chunks[b + 1].offset < until &&
        chunks[b + 1].offset + chunks[b + 1].length - chunks[a].offset <= PACK_BATCH
      )
        b++;
      this.requestedTo = b;
      this.packs!.loadChunks(a, b)
        .then((got) => {
          this.cache.stats.readaheadChunks += got.chunks;
        })
        .catch((err) =>
          this.log(`readahead of chunks ${a}-${b}: ${err instanceof Error ? err.message : err}`),
        );
    }
  }
}
