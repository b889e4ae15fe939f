import { type FileExtent, readSquashfsFiles } from "../blockimage/layout.js";
import type { BackgroundLoads } from "./background.js";
import type { ChunkCache } from "./cache.js";
import { chunkAt, chunksIn } from "./chunkmap.js";
import type { FileEndAt } from "./readahead.js";

const PAGE = 4096;

/** The image's regular files and where their data lies, read through the cache (from its tables). */
export async function readFileExtents(cache: ChunkCache): Promise<FileExtent[]> {
  const read = async (pos: number, len: number) => {
    const b = Buffer.alloc(Math.max(0, Math.min(len, cache.index.blockSize - pos)));
    await cache.read(b, pos, b.length, true, false);
    return b;
  };
  return (await readSquashfsFiles(read)).files;
}

/**
 * Where the data blocks of the file holding an image offset end (undefined outside every file's
 * blocks: metadata, fragments, another kind of image): a sequential stream stops there.
 */
export function fileEnds(files: FileExtent[]): FileEndAt {
  const spans = files.filter((f) => f.end > f.start).sort((a, b) => a.start - b.start);
  const starts = Float64Array.from(spans, (f) => f.start);
  const ends = Float64Array.from(spans, (f) => f.end);
  return (pos) => {
    // The last extent starting at or before pos.
    let lo = 0;
    let hi = starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (starts[mid] <= pos) lo = mid + 1;
      else hi = mid;
    }
    return lo > 0 && pos < ends[lo - 1] ? ends[lo - 1] : undefined;
  };
}

/**
 * File-aware readahead: squashfs reads a file one data block at a time, each a round trip when its
 * chunk is missing, so a cold `import` or `dlopen` waits for one chunk after another. The image's
 * own tables say where every file's data lies (blockimage/layout.ts; the daemon fetches those
 * tables at mount anyway), so the first read of a file's first chunk queues the rest of that
 * file's chunks (and the fragment block with its tail) as background loads, fetched in parallel
 * behind readers. Only for files of at most `maxBytes` in the image: a large file read in part
 * (a library mapped for a few pages) would fetch far more than it needs.
 */
export class FileReadahead {
  /** Extents sorted by start: [start, end, fragment start, fragment end] (fragment -1 if none). */
  private readonly starts: Float64Array;
  private readonly ends: Float64Array;
  private readonly frags: Float64Array;
  private readonly fragEnds: Float64Array;
  /** Files already triggered (or judged not worth it). */
  private readonly seen: Uint8Array;

  private constructor(
    private readonly cache: ChunkCache,
    private readonly loads: BackgroundLoads,
    extents: [number, number, number, number][],
  ) {
    extents.sort((a, b) => a[0] - b[0]);
    const n = extents.length;
    this.starts = new Float64Array(n);
    this.ends = new Float64Array(n);
    this.frags = new Float64Array(n);
    this.fragEnds = new Float64Array(n);
    this.seen = new Uint8Array(n);
    extents.forEach(([s, e, fs, fe], i) => {
      this.starts[i] = s;
      this.ends[i] = e;
      this.frags[i] = fs;
      this.fragEnds[i] = fe;
    });
  }

  /**
   * From the image's file extents (readFileExtents). Files of more than `maxBytes` in the image, and
   * files without data blocks (all in a fragment), are left out.
   */
  static from(
    cache: ChunkCache,
    loads: BackgroundLoads,
    files: FileExtent[],
    maxBytes: number,
  ): FileReadahead {
    const byStart = new Map<number, [number, number, number, number]>();
    for (const f of files) {
      if (f.end <= f.start || f.end - f.start > maxBytes) continue;
      // Duplicate files share their blocks: one entry per extent.
      byStart.set(f.start, [f.start, f.end, f.fragment?.[0] ?? -1, f.fragment?.[1] ?? -1]);
    }
    return new FileReadahead(cache, loads, [...byStart.values()]);
  }

  get files(): number {
    return this.starts.length;
  }

  /**
   * A read of [pos, pos+len): triggers the files whose data starts in its first page, once each.
   * Squashfs reads a file's first block at the block's start (the loop device passes it on page
   * aligned), so a file's first read begins in its first page; probes of the device (the mount's
   * superblock read, blkid) and reads of other data rarely do. Page 0 holds the superblock, which
   * every mount and probe reads: it never triggers.
   */
  observe(pos: number, len: number): void {
    if (pos <= 0) return;
    const index = this.cache.index;
    const end = Math.min(pos + len, pos + PAGE);
    for (let i = this.firstStartingAt(pos); i < this.starts.length && this.starts[i] < end; i++) {
      if (this.seen[i]) continue;
      this.seen[i] = 1;
      this.trigger(i, chunkAt(index, pos), chunkAt(index, Math.min(pos + len, index.blockSize) - 1));
    }
  }

  private trigger(i: number, readFirst: number, readLast: number): void {
    const index = this.cache.index;
    const todo = chunksIn(index, this.starts[i], this.ends[i] - this.starts[i]);
    if (this.frags[i] >= 0) todo.push(...chunksIn(index, this.frags[i], this.fragEnds[i] - this.frags[i]));
    const rest = todo.filter((c) => c < readFirst || c > readLast);
    if (rest.length === 0) return;
    const stats = this.cache.stats.fileReadahead;
    stats.files++;
    for (const c of rest) {
      this.loads.add(c, (fetched) => {
        if (!fetched) return;
        stats.chunks++;
        stats.bytes += index.chunks[c].length;
      });
    }
  }

  /** Index of the first extent with start >= `pos` (the count if none). */
  private firstStartingAt(pos: number): number {
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.starts[mid] < pos) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
