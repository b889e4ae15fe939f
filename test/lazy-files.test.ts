import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileReader, readSquashfsFiles, type SquashfsFiles } from "../src/blockimage/layout.js";
import { withConfig } from "../src/config/index.js";
import { chunksIn } from "../src/lazy/chunkmap.js";
import { cleanupStale, type LazyImage, openLazyImage } from "../src/lazy/index.js";
import type { BlockIndex, ChunkSource, Digest } from "../src/store/types.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { indexBytes } from "./helpers/blockindex.js";

const CHUNK = 64 << 10;
let tmp: string;
let image: Buffer;
let layout: SquashfsFiles;

before(async () => {
  tmp = await mkdtemp("/tmp/kindling-lazy-files-");
  const src = path.join(tmp, "src");
  await mkdir(src);
  // Incompressible, so each file's extent is about its size: one under the bound, one over it
  // (after a first file, whose data shares page 0 with the superblock).
  await writeFile(path.join(src, "0-first.bin"), randomBytes(200 << 10));
  await writeFile(path.join(src, "a-moderate.bin"), randomBytes(1 << 20));
  await writeFile(path.join(src, "b-large.bin"), randomBytes(3 << 20));
  await writeFile(path.join(src, "c-small.txt"), "small\n");
  await exec("mksquashfs", [src, path.join(tmp, "img.sqfs"), "-noappend", "-quiet", "-no-progress"]);
  image = await readFile(path.join(tmp, "img.sqfs"));
  const fh = await open(path.join(tmp, "img.sqfs"), "r");
  try {
    layout = await readSquashfsFiles(fileReader(fh), { names: true });
  } finally {
    await fh.close();
  }
});

after(async () => {
  await cleanupStale(new KindlingHome(path.join(tmp, "home"))).catch(() => {});
  await rm(tmp, { recursive: true, force: true });
});

/** Polls `cond` every 50 ms for up to `ms`; fails with `what` if it never holds. */
async function until(what: string, cond: () => Promise<boolean>, ms = 20_000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; ) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`timed out waiting for ${what}`);
}

async function readAt(file: string, pos: number, len = 4096): Promise<Buffer> {
  const fh = await open(file, "r");
  try {
    const b = Buffer.alloc(len);
    await fh.read(b, 0, len, pos);
    return b;
  } finally {
    await fh.close();
  }
}

const extentOf = (name: string) => layout.files.find((f) => f.path === name)!;
const chunksOf = (index: BlockIndex, name: string) => {
  const f = extentOf(name);
  return chunksIn(index, f.start, f.end - f.start);
};

test("the first read of a file's first chunk fetches the rest of that file, only for files under the bound", async () => {
  const home = new KindlingHome(path.join(tmp, "home")).ensure();
  const { index, record, chunks } = await indexBytes(home, image, CHUNK, false);
  const fetched = new Set<string>();
  const source: ChunkSource = {
    description: "memory",
    async fetch(digest: Digest) {
      fetched.add(digest);
      return chunks.get(digest)!;
    },
  };
  const moderate = chunksOf(index, "a-moderate.bin");
  const large = chunksOf(index, "b-large.bin");
  assert.ok(moderate.length >= 10 && large.length >= 40, `${moderate.length} and ${large.length} chunks`);

  // 2 MiB: the 1 MiB file qualifies, the 3 MiB one does not. No sequential readahead.
  const lazy: LazyImage = await withConfig({ lazyFileReadahead: 2 << 20 }, () =>
    openLazyImage(home, record, source, { readaheadChunks: 0 }),
  );
  try {
    const log = path.join(lazy.dir, "daemon.log");
    await until("the file extents", async () =>
      /file-aware readahead: \d+ files/.test(await readFile(log, "utf8")),
    );
    assert.match(await readFile(log, "utf8"), /file-aware readahead: 2 files of at most 2097152 bytes/);

    // As squashfs reads a file's first block through the loop device: from its first page.
    const page = (pos: number) => pos - (pos % 4096);
    // The large file first: only what is read is fetched.
    const big = extentOf("b-large.bin");
    const bigAt = page(big.start);
    assert.ok((await readAt(lazy.path, bigAt)).equals(image.subarray(bigAt, bigAt + 4096)));
    const a = extentOf("a-moderate.bin");
    const aAt = page(a.start);
    assert.ok((await readAt(lazy.path, aAt)).equals(image.subarray(aAt, aAt + 4096)));
    await until("the moderate file's chunks in the store", async () =>
      moderate.every((i) => existsSync(home.blobPath(index.chunks[i].digest))),
    );
    const s = await lazy.stats();
    assert.equal(s.fileReadahead.files, 1, "one file triggered (the large one is over the bound)");
    // All but the chunks of the read itself (which the kernel's own readahead widens).
    const ahead = s.fileReadahead.chunks;
    assert.ok(ahead > 0 && ahead < moderate.length, `${ahead} chunks read ahead`);
    // (Its last chunk also holds the first metadata, fetched with the tables.)
    const unread = large.slice(4, -1).filter((i) => fetched.has(index.chunks[i].digest));
    assert.deepEqual(unread, [], "nothing of the large file beyond its read");
    assert.equal(s.readErrors, 0);
    // The trace saw the reads that waited.
    assert.ok(s.trace.slowReads >= 1 && s.trace.firstReadAt! >= s.trace.mountedAt, JSON.stringify(s.trace));
  } finally {
    await lazy.close();
  }
});

test("with the bound at 0 nothing is read ahead", async () => {
  const home = new KindlingHome(path.join(tmp, "home0")).ensure();
  const { index, record, chunks } = await indexBytes(home, image, CHUNK, false);
  const fetched = new Set<string>();
  const source: ChunkSource = {
    description: "memory",
    async fetch(digest: Digest) {
      fetched.add(digest);
      return chunks.get(digest)!;
    },
  };
  const lazy = await withConfig({ lazyFileReadahead: 0 }, () =>
    openLazyImage(home, record, source, { readaheadChunks: 0 }),
  );
  try {
    await until("the tables prefetch", async () => (await lazy.stats()).prefetch.state === "done");
    const a = extentOf("a-moderate.bin");
    await readAt(lazy.path, a.start - (a.start % 4096));
    const s = await lazy.stats();
    assert.equal(s.fileReadahead.files, 0);
    const moderate = chunksOf(index, "a-moderate.bin");
    assert.ok(!fetched.has(index.chunks[moderate.at(-1)!].digest), "the file's last chunk was not fetched");
  } finally {
    await lazy.close();
    await cleanupStale(home);
  }
});
