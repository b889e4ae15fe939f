/**
 * Issue 15, classes 3 and 7 (lazy part), on real parts: a registry frozen with SIGSTOP (a circuit
 * breaker fails the remaining reads fast, and closes once the registry answers again), and a
 * chunk cache on a full, size-limited filesystem (verified bytes are served anyway, and the stats
 * say the cache is full).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { readMountinfo } from "../src/host/mounts.js";
import { cleanupStale, openLazyImage } from "../src/lazy/index.js";
import type { ChunkSource, Digest } from "../src/store/types.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { indexBytes } from "./helpers/blockindex.js";
import { startRegistry, type TestRegistry } from "./helpers/registry.js";

let tmp: string;
let registry: TestRegistry;

before(async () => {
  tmp = await mkdtemp("/tmp/kindling-lazy-faults-");
  registry = await startRegistry();
});
after(async () => {
  registry.signal("SIGCONT");
  await registry.stop();
  for (const h of ["frozen", "full"]) await cleanupStale(new KindlingHome(path.join(tmp, h))).catch(() => {});
  await exec("umount", ["-l", path.join(tmp, "full", "blobs", "sha256")], { allowFailure: true });
  const left = (await readMountinfo()).filter((m) => m.mountPoint.startsWith(tmp));
  await rm(tmp, { recursive: true, force: true });
  assert.deepEqual(left, [], "nothing of ours stays mounted");
});

async function pread(file: string, pos: number, len: number): Promise<Buffer> {
  const fh = await open(file, "r");
  try {
    const buf = Buffer.alloc(len);
    const { bytesRead } = await fh.read(buf, 0, len, pos);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

async function upload(repository: string, digest: string, data: Buffer): Promise<void> {
  const start = await fetch(`${registry.url}/v2/${repository}/blobs/uploads/`, { method: "POST" });
  assert.equal(start.status, 202);
  const loc = new URL(start.headers.get("location")!, registry.url);
  loc.searchParams.set("digest", digest);
  const put = await fetch(loc, { method: "PUT", body: new Uint8Array(data) });
  assert.equal(put.status, 201, await put.text());
}

test("a frozen registry: after one deadline the other reads fail fast; reads work again once it answers", async () => {
  const home = new KindlingHome(path.join(tmp, "frozen")).ensure();
  const data = randomBytes(12 * (64 << 10));
  const { index, record, chunks } = await indexBytes(home, data, 64 << 10, false);
  record.origin = {
    kind: "registry",
    registry: registry.host,
    repository: "faults/a",
    reference: "t",
    insecure: true,
  };
  for (const [digest, bytes] of chunks) await upload("faults/a", digest, bytes);
  const lazy = await openLazyImage(home, record, "auto", {
    prefetch: false,
    readaheadChunks: 0,
    deadlineMs: 1500,
    attemptTimeoutMs: 500,
  });
  try {
    assert.ok((await pread(lazy.path, 0, 4096)).equals(data.subarray(0, 4096)), "chunk 0 while it answers");
    registry.signal("SIGSTOP");
    // Ten uncached chunks, one after another, as a reader of ten files would.
    for (let i = 1; i <= 10; i++)
      await assert.rejects(pread(lazy.path, index.chunks[i]!.offset, 4096), /EIO/);
    const s = await lazy.stats();
    assert.ok(
      s.fetchesRefused >= 8,
      `reads after the first deadline are refused at once (${s.fetchesRefused})`,
    );
    assert.match(s.sourceDown ?? "", /did not answer within 1500 ms/);

    registry.signal("SIGCONT");
    // The breaker half-opens after its cooldown (the deadline here) and a recent failure is
    // remembered for 2 s: poll each chunk, bounded.
    for (let i = 1; i <= 11; i++) {
      const c = index.chunks[i]!;
      let got: Buffer | undefined;
      for (let tries = 0; tries < 20 && !got; tries++) {
        got = await pread(lazy.path, c.offset, 4096).catch(() => undefined);
        if (!got) await new Promise((r) => setTimeout(r, 500));
      }
      assert.ok(got?.equals(data.subarray(c.offset, c.offset + 4096)), `chunk ${i} served again`);
    }
    assert.equal((await lazy.stats()).sourceDown, undefined, "the circuit closed");
  } finally {
    registry.signal("SIGCONT");
    await lazy.close();
  }
});

test("a full chunk cache: verified bytes are still served, and the stats say the cache is full", async () => {
  const home = new KindlingHome(path.join(tmp, "full")).ensure();
  const data = randomBytes(1 << 20);
  // A 512 KiB filesystem as blobs/: the index fits, the chunks do not.
  await exec("mount", ["-t", "tmpfs", "-o", "size=512k", "tmpfs", home.blobs]);
  const { record, chunks } = await indexBytes(home, data, 128 << 10, false);
  await writeFile(path.join(home.blobs, "filler"), Buffer.alloc(1 << 20)).catch(() => {});
  const source: ChunkSource = {
    description: "memory",
    fetch: async (digest: Digest) => chunks.get(digest)!,
  };
  const lazy = await openLazyImage(home, record, source, { prefetch: false, readaheadChunks: 0 });
  try {
    assert.ok((await readFile(lazy.path)).equals(data), "every byte served");
    const s = await lazy.stats();
    assert.equal(s.readErrors, 0);
    assert.ok(s.cacheWriteErrors > 0);
    assert.match(s.cacheFull ?? "", /chunk cache .* is full \(ENOSPC\): chunks are served but not kept/);
  } finally {
    await lazy.close();
  }
});
