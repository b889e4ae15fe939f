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
 * With packs: what is kept requested ahead of a sequential reader: as many bytes as its run has
 * covered (the window doubles, as the kernel's own readahead does), up to PACK_WINDOW, but never
 * past the end of the file being read (the image's layout: a run over many small files then
 * fetches no more than each file). The layout is read when a first run covers GROW_AFTER; until
 * then, or in an image without one, the same `window` chunks as the path without packs (one ranged
 * request) until the run covers GROW_AFTER: a byte window growing from the first MiB, not bounded
 * by files, fetched 33 instead of 25 MB on a cold `import numpy`...
 */
const PACK_WINDOW = 16 << 20;
const GROW_AFTER = 4 << 20;
/** ...in ranged requests of at most this many bytes each, a new one as soon as there is room for it. */
const PACK_BATCH = 4 << 20;

/** Where the file holding an image offset ends (its last data block), if the offset is in one. */
export type FileEndAt = (pos: number) => number | undefined;

/**
 * Detects sequential reading and warms the next chunks in the background. Reads arrive from
 * several FUSE threads (and a loop device issues them in parallel), so "sequential" tolerates
 * small reorderings. With an image's pack segments (chunks/packs.ts) it streams: it keeps
 * PACK_WINDOW bytes requested ahead of the reader as ranged requests of PACK_BATCH bytes, instead
 * of one request per chunk.
 */
export class Readahead {
  private nextPos = -1;
  /** Where the current run began. */
  private runStart = 0;
  private streak = 0;
  private runBytes = 0;
  private readonly warming = new Set<number>();
  /** The chunk the last readahead started from: one decision per chunk, not per read. */
  private lastFrom = -1;
  /** With packs: the last chunk requested ahead of this run. */
  private requestedTo = -1;
  /** The image's file layout: a stream stops at the end of the file it reads (set once known). */
  private fileEnd?: FileEndAt;
  /** Asked once, when a run first gets long enough to stream: where files end. */
  private layoutAsked = false;
  private layoutPending = false;

  private readonly slack: number;
  private readonly kernelReadahead: number;

  constructor(
    private readonly cache: ChunkCache,
    private readonly window: number,
    private readonly log: (msg: string) => void,
    private readonly packs?: PackLoader,
    /** The kernel's readahead on the file (bytes): how far apart a window's requests may arrive. */
    kernelReadahead = 0,
    /**
     * Reads the image's file layout; asked once, by the first run that covers GROW_AFTER (so a start
     * made of short reads never pays for it). A failure just means streams are not stopped at file ends.
     */
    private readonly layout?: () => Promise<FileEndAt>,
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
    if (!seq) this.runStart = pos;
    if (this.runBytes >= TRIGGER && this.window > 0) this.ahead(this.nextPos);
    return this.streak >= 2;
  }

  private ahead(from: number): void {
    const first = chunkAt(this.cache.index, Math.min(from, this.cache.index.blockSize - 1));
    if (first < 0 || first === this.lastFrom) return;
    this.lastFrom = first;
    if (this.packs?.hasSegments) {
      // The layout costs the event loop ~0.1-0.25 s of CPU (an image of 5-8 thousand files): only a
      // long run asks for it; a program's start (numpy's runs stay under it) never pays.
      if (this.runBytes >= GROW_AFTER) this.askLayout();
      // While it is being read, 4 chunks still: a byte window now could run past the file's end.
      const unbounded = !this.fileEnd && (this.runBytes < GROW_AFTER || this.layoutPending);
      const grown = unbounded ? 0 : Math.min(PACK_WINDOW, this.runBytes);
      // The kernel's window grows about as the run does, up to its readahead: stay a window ahead.
      // The file being read is the one `slack` behind the furthest read: a readahead (the kernel's,
      // on a page-cache reader) that crosses a file's end does not make the next file the stream's.
      const reading = Math.max(this.runStart, from - 1 - this.slack);
      this.stream(first, Math.max(grown, Math.min(this.kernelReadahead, this.runBytes)), reading);
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

  private askLayout(): void {
    if (this.layoutAsked || !this.layout) return;
    this.layoutAsked = true;
    this.layoutPending = true;
    this.layout()
      .then(
        (fileEnd) => {
          this.fileEnd = fileEnd;
        },
        (err) =>
          this.log(
            `file ends unknown, streams not bounded by them: ${err instanceof Error ? err.message : err}`,
          ),
      )
      .finally(() => {
        this.layoutPending = false;
      });
  }

  /**
   * Tops up the ranged requests ahead of a reader at chunk `at`: `window` bytes (not past the end of
   * the file holding byte `last`, the furthest read), or (0) `this.window` chunks.
   */
  private stream(at: number, window: number, lastRead: number): void {
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
    let until = window > 0 ? chunks[at].offset + chunks[at].length + window : chunks[last].offset + 1;
    const fileEnd = this.fileEnd?.(lastRead);
    if (fileEnd !== undefined) until = Math.min(until, fileEnd);
    // Top up once a batch fits (or half a smaller window is used): few, large requests, and with a
    // large window several in flight.
    const refill =
      window > 0
        ? until - Math.min(PACK_BATCH, window / 2)
        : chunks[Math.min(at + (this.window >> 1), last)].offset;
    if (this.requestedTo > at && chunks[this.requestedTo].offset > refill) return;
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
