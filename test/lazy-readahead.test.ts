// The lazy daemon's sequential detection (src/lazy/readahead.ts) with the kernel's readahead on the
// lazy file: a readahead window's requests reach the daemon at once, from several FUSE threads, in
// any order. The stream of ranged requests must still start and stay ahead of the furthest read.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { PackLoader } from "../src/chunks/packloader.js";
import type { ChunkCache } from "../src/lazy/cache.js";
import { type FileEndAt, Readahead } from "../src/lazy/readahead.js";
import { newStats } from "../src/lazy/stats.js";
import type { BlockIndex } from "../src/store/types.js";

const CHUNK = 128 << 10;
const WINDOW = 4 << 20;

/** A 64 MiB image of 128 KiB chunks, and pack segments that record which chunks were requested. */
function setup(kernelReadahead: number, layout?: () => Promise<FileEndAt>) {
  const n = 512;
  const index = {
    blockSize: n * CHUNK,
    chunks: Array.from({ length: n }, (_, i) => ({
      offset: i * CHUNK,
      length: CHUNK,
      digest: `sha256:${i.toString(16).padStart(64, "0")}`,
    })),
  } as BlockIndex;
  const cache = { index, stats: newStats("sha256:x", index.blockSize) } as unknown as ChunkCache;
  const requested = new Set<number>();
  const packs = {
    hasSegments: true,
    async loadChunks(a: number, b: number) {
      for (let i = a; i <= b; i++) requested.add(i);
      return { chunks: b - a + 1, bytes: (b - a + 1) * CHUNK };
    },
  } as unknown as PackLoader;
  const ra = new Readahead(cache, 4, () => {}, packs, kernelReadahead, layout);
  return { ra, requested };
}

/** Reads [0, upTo) as a kernel readahead would send it: windows of 128 KiB requests, each window shuffled. */
function readInShuffledWindows(ra: Readahead, upTo: number): void {
  let seed = 7;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  for (let w = 0; w < upTo; w += WINDOW) {
    const reqs = Array.from({ length: WINDOW / CHUNK }, (_, i) => w + i * CHUNK);
    for (let i = reqs.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [reqs[i], reqs[j]] = [reqs[j], reqs[i]];
    }
    for (const pos of reqs) ra.observe(pos, CHUNK);
  }
}

test("requests of a kernel readahead window arriving out of order still stream ranges ahead of the furthest read", () => {
  const { ra, requested } = setup(WINDOW);
  readInShuffledWindows(ra, 32 << 20);
  // Everything after the first window (its readers fetch their own chunks: the run starts once
  // they cover 1 MiB), without a gap when a window's furthest request comes first, and beyond.
  const read = (32 << 20) / CHUNK;
  const missing = [];
  for (let i = WINDOW / CHUNK; i < read; i++) if (!requested.has(i)) missing.push(i);
  assert.deepEqual(missing, [], "chunks no range requested");
  assert.ok(requested.has(read + 8), "the stream runs ahead of the furthest read");
});

test("without kernel readahead (direct I/O loop) the same shuffled requests do not look sequential", () => {
  const { ra, requested } = setup(0);
  readInShuffledWindows(ra, 32 << 20);
  assert.ok(requested.size < 64, `${requested.size} chunks requested ahead`);
});

/** Reads [from, to) in order, 128 KiB at a time (a loop device with direct I/O under squashfs). */
async function readInOrder(ra: Readahead, from: number, to: number): Promise<void> {
  for (let pos = from; pos < to; pos += CHUNK) {
    ra.observe(pos, CHUNK);
    await new Promise((r) => setImmediate(r)); // the layout arrives like any read of its tables
  }
}

test("with the image's layout (read once a run covers 4 MiB) a stream stops at the end of the file read, and doubles from the first MiB", async () => {
  // Files [0, 24 MiB), [24, 44 MiB) and [44, 64 MiB).
  const ends = [24 << 20, 44 << 20, 64 << 20];
  const fileEnd: FileEndAt = (pos) => ends.find((e) => pos < e);
  let asked = 0;
  const { ra, requested } = setup(0, async () => {
    asked++;
    return fileEnd;
  });
  await readInOrder(ra, 0, 3 << 20);
  assert.equal(asked, 0, "a run under 4 MiB does not ask for the layout");
  await readInOrder(ra, 3 << 20, 24 << 20);
  assert.equal(asked, 1, "the layout is read once a run covers 4 MiB");
  const past = [...requested].filter((i) => i >= (24 << 20) / CHUNK);
  assert.deepEqual(past, [], "nothing requested past the end of the file read");
  await readInOrder(ra, 24 << 20, 30 << 20);
  assert.ok(requested.has((36 << 20) / CHUNK), "reading on into the next file streams it");
  assert.ok(!requested.has((44 << 20) / CHUNK), "...up to its end");
  // A new run at the third file's start: with the layout known, a window as long as the run (topped
  // up once half of it is free): past 47 MiB after 2 MiB read (without it: 4 chunks, to 46.5 MiB).
  await readInOrder(ra, 44 << 20, 46 << 20);
  assert.ok(requested.has((47 << 20) / CHUNK), "the window grew with the run");
  assert.equal(asked, 1);
});

test("without a layout (not SquashFS) a stream keeps the old ramp: 4 chunks until the run covers 4 MiB", async () => {
  const { ra, requested } = setup(0, async () => {
    throw new Error("not a SquashFS image");
  });
  await readInOrder(ra, 0, 2 << 20);
  assert.ok(!requested.has((3 << 20) / CHUNK), "no byte window before 4 MiB");
  await readInOrder(ra, 2 << 20, 24 << 20);
  assert.ok(requested.has((30 << 20) / CHUNK), "past 4 MiB the window grows, unbounded by files");
});
