import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { cleanupStale, type LazyImage, openLazyImage } from "../src/lazy/index.js";
import { checkProfile, profilePath, readProfileFile, writeProfile } from "../src/lazy/profile.js";
import type { ChunkSource, Digest } from "../src/store/types.js";
import { KindlingHome } from "../src/util/home.js";
import { indexBytes } from "./helpers/blockindex.js";

const CHUNK = 256 << 10;
let tmp: string;
before(async () => {
  tmp = await mkdtemp("/tmp/kindling-lazy-profile-");
});
after(async () => {
  for (const h of ["a", "b", "c"]) await cleanupStale(new KindlingHome(path.join(tmp, h))).catch(() => {});
  await rm(tmp, { recursive: true, force: true });
});

/** Serves chunks from memory, counting fetches (the daemon asks over IPC). */
function memorySource(chunks: Map<string, Buffer>): ChunkSource & { fetched: string[] } {
  const fetched: string[] = [];
  return {
    description: "memory",
    fetched,
    async fetch(digest: Digest) {
      fetched.push(digest);
      const b = chunks.get(digest);
      if (!b) throw new Error(`no chunk ${digest}`);
      return b;
    },
  };
}

/** Polls `cond` every 50 ms for up to `ms`; fails with `what` if it never holds. */
async function until(what: string, cond: () => Promise<boolean>, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; ) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`timed out waiting for ${what}`);
}

async function readAt(file: string, pos: number): Promise<void> {
  const fh = await open(file, "r");
  try {
    await fh.read(Buffer.alloc(512), 0, 512, pos);
  } finally {
    await fh.close();
  }
}

test("checkProfile: a profile for another image is stale, a malformed one corrupt", () => {
  const d = `sha256:${"a".repeat(64)}`;
  assert.deepEqual(checkProfile({ image: d, chunks: [3, 1] }, d, 4), { chunks: [3, 1] });
  assert.ok("stale" in checkProfile({ image: `sha256:${"b".repeat(64)}`, chunks: [1] }, d, 4));
  for (const bad of [
    null,
    "x",
    { image: d },
    { image: d, chunks: [4] },
    { image: d, chunks: [1, 1] },
    { image: d, chunks: [0.5] },
  ]) {
    assert.ok("corrupt" in checkProfile(bad, d, 4), JSON.stringify(bad));
  }
});

test("a first run records a startup profile; a fresh home with it fetches those chunks before any read", async () => {
  const data = randomBytes(CHUNK * 8);
  const homeA = new KindlingHome(path.join(tmp, "a")).ensure();
  const { record, chunks, index } = await indexBytes(homeA, data, CHUNK, false);
  const srcA = memorySource(chunks);
  let lazy: LazyImage = await openLazyImage(homeA, record, srcA, { readaheadChunks: 0 });
  try {
    await readAt(lazy.path, 5 * CHUNK + 100);
    await readAt(lazy.path, 2 * CHUNK + 100);
    await until("the profile file", async () => {
      const p = (await readProfileFile(homeA, record.digest)) as { chunks?: number[] } | undefined;
      return JSON.stringify(p?.chunks) === "[5,2]";
    });
    assert.equal((await lazy.stats()).profile.state, "recording");
  } finally {
    await lazy.close();
  }

  // Another worker with the profile (as `image pull` leaves it): chunks 5 and 2 arrive unasked.
  const homeB = new KindlingHome(path.join(tmp, "b")).ensure();
  await indexBytes(homeB, data, CHUNK, false);
  await writeProfile(homeB, { image: record.digest, chunks: [5, 2] });
  const srcB = memorySource(chunks);
  lazy = await openLazyImage(homeB, record, srcB);
  try {
    await until("the profile prefetch", async () => (await lazy.stats()).profile.state === "done");
    const s = await lazy.stats();
    assert.equal(s.profile.chunks, 2);
    assert.equal(s.reads, 0, "fetched ahead of any read");
    for (const i of [5, 2]) assert.ok(existsSync(homeB.blobPath(index.chunks[i].digest)));
    assert.ok(!existsSync(homeB.blobPath(index.chunks[7].digest)), "only the profile's chunks");
  } finally {
    await lazy.close();
  }
});

test("a corrupt profile is ignored with a warning in the daemon log, and reads still work", async () => {
  const data = randomBytes(CHUNK * 4);
  const home = new KindlingHome(path.join(tmp, "c")).ensure();
  const { record, chunks } = await indexBytes(home, data, CHUNK, false);
  await mkdir(path.dirname(profilePath(home, record.digest)), { recursive: true });
  await writeFile(profilePath(home, record.digest), "{not json");
  const lazy = await openLazyImage(home, record, memorySource(chunks));
  try {
    assert.ok((await readFile(lazy.path)).equals(data));
    assert.equal((await lazy.stats()).profile.chunks, 0);
    const log = await readFile(path.join(lazy.dir, "daemon.log"), "utf8");
    assert.match(log, /warning: ignoring the startup profile/);
  } finally {
    await lazy.close();
  }
});
