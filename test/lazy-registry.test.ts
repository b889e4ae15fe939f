import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { cleanupStale, openLazyImage } from "../src/lazy/index.js";
import { writeBlockIndex } from "../src/store/blockindex.js";
import { KindlingHome } from "../src/util/home.js";
import { indexBytes } from "./helpers/blockindex.js";
import { startRegistry, type TestRegistry } from "./helpers/registry.js";

let tmp: string;
let registry: TestRegistry;
const repository = "lazy/test";

before(async () => {
  tmp = await mkdtemp("/tmp/kindling-lazy-reg-");
  registry = await startRegistry();
});
after(async () => {
  await registry.stop();
  for (const h of ["a", "b"]) await cleanupStale(new KindlingHome(path.join(tmp, h))).catch(() => {});
  await rm(tmp, { recursive: true, force: true });
});

/** Monolithic blob upload (POST then PUT ?digest=), as any registry client does. */
async function upload(digest: string, data: Buffer): Promise<void> {
  const start = await fetch(`${registry.url}/v2/${repository}/blobs/uploads/`, { method: "POST" });
  assert.equal(start.status, 202);
  const loc = new URL(start.headers.get("location")!, registry.url);
  loc.searchParams.set("digest", digest);
  const put = await fetch(loc, {
    method: "PUT",
    body: new Uint8Array(data),
    headers: { "content-type": "application/octet-stream" },
  });
  assert.equal(put.status, 201, await put.text());
}

async function pulledImage(home: KindlingHome, data: Buffer) {
  const made = await indexBytes(home, data, 256 << 10, false);
  made.record.origin = {
    kind: "registry",
    registry: registry.host,
    repository,
    reference: "t",
    insecure: true,
  };
  return made;
}

test("source auto fetches a pulled image's chunks from its registry, then a stopped registry gives EIO", async () => {
  const data = randomBytes((2 << 20) + 777);
  const homeA = new KindlingHome(path.join(tmp, "a")).ensure();
  const { index, record, chunks } = await pulledImage(homeA, data);
  for (const [digest, bytes] of chunks) await upload(digest, bytes);

  const lazy = await openLazyImage(homeA, record, "auto", { prefetch: false });
  try {
    assert.ok((await readFile(lazy.path)).equals(data));
    const s = await lazy.stats();
    assert.equal(s.bytesFetched, data.length, "each chunk fetched once");
    for (const c of index.chunks) assert.ok(existsSync(homeA.blobPath(c.digest)), "cached locally");
  } finally {
    await lazy.close();
  }

  // A second worker (fresh home) whose registry goes away: bounded EIO, not a hang.
  const homeB = new KindlingHome(path.join(tmp, "b")).ensure();
  await writeBlockIndex(homeB, index); // as a pull leaves it
  const lazyB = await openLazyImage(homeB, record, "auto", {
    prefetch: false,
    deadlineMs: 2500,
    attemptTimeoutMs: 800,
  });
  try {
    await registry.stop();
    const t0 = Date.now();
    await assert.rejects(readFile(lazyB.path), /EIO/);
    assert.ok(Date.now() - t0 < 6000, `EIO after ${Date.now() - t0} ms`);
    const s = await lazyB.stats();
    assert.ok(s.fetchErrors >= 1 && s.readErrors >= 1);
  } finally {
    await lazyB.close();
  }
});
