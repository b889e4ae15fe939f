import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { Limiter } from "../src/chunks/limiter.js";
import { readMountinfo } from "../src/host/mounts.js";
import { chunkAt, chunksIn } from "../src/lazy/chunkmap.js";
import { cleanupStale, openLazyImage, stopIdleShared } from "../src/lazy/index.js";
import { parseSquashfsSuperblock } from "../src/lazy/squashfs.js";
import type { ChunkSource, Digest } from "../src/store/types.js";
import { KindlingHome } from "../src/util/home.js";
import { indexBytes } from "./helpers/blockindex.js";

let home: KindlingHome;
before(async () => {
  home = new KindlingHome(await mkdtemp("/tmp/kindling-lazy-test-")).ensure();
});
after(async () => {
  await cleanupStale(home);
  const left = (await readMountinfo()).filter((m) => m.mountPoint.startsWith(home.root));
  await rm(home.root, { recursive: true, force: true });
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

/** A source serving chunks from memory, counting fetches per digest; `mode` injects faults. */
function memorySource(chunks: Map<string, Buffer>, mode: "ok" | "corrupt" | "hang" = "ok", delayMs = 0) {
  const calls = new Map<string, number>();
  const source: ChunkSource = {
    description: `memory (${mode})`,
    async fetch(digest: Digest) {
      calls.set(digest, (calls.get(digest) ?? 0) + 1);
      if (mode === "hang") return new Promise<Buffer>(() => {});
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
      const data = chunks.get(digest);
      if (!data) throw new Error(`no chunk ${digest}`);
      if (mode === "corrupt") {
        const bad = Buffer.from(data);
        bad[0] ^= 0xff;
        return bad;
      }
      return data;
    },
  };
  return { source, calls };
}

test("reads through the lazy file equal the image bytes (variable chunks, boundaries, EOF)", async () => {
  const data = randomBytes((3 << 20) + 12345);
  const { index, record } = await indexBytes(home, data, [64 << 10, 100_000, 300_001]);
  const lazy = await openLazyImage(home, record, "auto");
  try {
    const fh = await open(lazy.path, "r");
    try {
      assert.equal((await fh.stat()).size, data.length);
      const check = async (pos: number, len: number) => {
        const buf = Buffer.alloc(len);
        const { bytesRead } = await fh.read(buf, 0, len, pos);
        const want = data.subarray(pos, Math.min(pos + len, data.length));
        assert.equal(bytesRead, want.length, `length at ${pos}+${len}`);
        assert.ok(buf.subarray(0, bytesRead).equals(want), `bytes at ${pos}+${len}`);
      };
      for (const c of index.chunks) {
        await check(Math.max(0, c.offset - 7), 14); // across each boundary
        await check(c.offset, c.length); // exactly one chunk
      }
      for (let i = 0; i < 200; i++) {
        await check(Math.floor(Math.random() * data.length), 1 + Math.floor(Math.random() * 300_000));
      }
      await check(data.length - 100, 4096); // short read at EOF
      await check(data.length, 4096); // at EOF
      await check(data.length + 1_000_000, 10); // past EOF
    } finally {
      await fh.close();
    }
    assert.ok((await readFile(lazy.path)).equals(data));
    await assert.rejects(open(lazy.path, "r+"), /EROFS|EACCES/);
    const s = await lazy.stats();
    assert.equal(s.bytesFetched, 0, "every chunk was local");
    assert.ok(s.bytesServed > 0 && s.cacheHits > 0);
  } finally {
    await lazy.close();
  }
  assert.ok(!existsSync(lazy.dir), "close removes the daemon's directory");
});

test("concurrent readers of a missing chunk cause one fetch, verified and cached", async () => {
  const data = randomBytes(2 << 20);
  const { index, record, chunks } = await indexBytes(home, data, 256 << 10, false);
  const { source, calls } = memorySource(chunks, "ok", 300);
  const lazy = await openLazyImage(home, record, source, { prefetch: false, readaheadChunks: 0 });
  try {
    const target = index.chunks[3];
    const offsets = Array.from({ length: 8 }, (_, i) => target.offset + i * 4096 * 7);
    const got = await Promise.all(offsets.map((o) => pread(lazy.path, o, 4096)));
    got.forEach((b, i) => void assert.ok(b.equals(data.subarray(offsets[i], offsets[i] + 4096))));
    assert.equal(calls.get(target.digest), 1, "one fetch of the chunk");
    assert.ok(existsSync(home.blobPath(target.digest)), "the verified chunk is in the cache");
    const s = await lazy.stats();
    assert.equal(
      s.chunksFetched,
      [...calls.values()].reduce((a, b) => a + b, 0),
    );
    assert.ok(s.cacheMisses >= 1 && s.bytesFetched >= target.length);
  } finally {
    await lazy.close();
  }
});

test("a corrupted chunk gives EIO within the deadline and is never cached", async () => {
  const data = randomBytes(1 << 20);
  const { index, record, chunks } = await indexBytes(home, data, 256 << 10, false);
  const { source, calls } = memorySource(chunks, "corrupt");
  const policy = { deadlineMs: 3000, attemptTimeoutMs: 1000, retries: 2, backoffMs: 50 };
  const lazy = await openLazyImage(home, record, source, {
    ...policy,
    prefetch: false,
    readaheadChunks: 0,
  });
  try {
    const t0 = Date.now();
    await assert.rejects(pread(lazy.path, 300_000, 4096), /EIO/);
    assert.ok(Date.now() - t0 < policy.deadlineMs + 2000, `EIO after ${Date.now() - t0} ms`);
    const target = index.chunks[1];
    assert.equal(calls.get(target.digest), 3, "first attempt and two retries");
    for (const c of index.chunks) assert.ok(!existsSync(home.blobPath(c.digest)), "nothing corrupt cached");
    const s = await lazy.stats();
    assert.ok(s.verifyFailures >= 3 && s.readErrors >= 1 && s.chunksFetched === 0);
  } finally {
    await lazy.close();
  }
});

test("a source that hangs gives EIO within the configured deadline", async () => {
  const data = randomBytes(1 << 20);
  const { record, chunks } = await indexBytes(home, data, 256 << 10, false);
  const { source } = memorySource(chunks, "hang");
  const lazy = await openLazyImage(home, record, source, {
    deadlineMs: 2000,
    attemptTimeoutMs: 700,
    retries: 5,
    prefetch: false,
  });
  try {
    const t0 = Date.now();
    await assert.rejects(pread(lazy.path, 0, 4096), /EIO/);
    const took = Date.now() - t0;
    assert.ok(took >= 1000 && took < 4000, `EIO after ${took} ms`);
  } finally {
    await lazy.close();
  }
});

test("a killed daemon gives readers an error, and the next open cleans its stale mount", async () => {
  const data = randomBytes(1 << 20);
  const { record } = await indexBytes(home, data, 128 << 10);
  const first = await openLazyImage(home, record, "auto");
  let second: Awaited<ReturnType<typeof openLazyImage>> | undefined;
  try {
    assert.ok((await pread(first.path, 0, 4096)).equals(data.subarray(0, 4096)));
    const fh = await open(first.path, "r");
    process.kill(first.pid, "SIGKILL");
    await new Promise((r) => setTimeout(r, 200));
    const t0 = Date.now();
    await assert.rejects(fh.read(Buffer.alloc(4096), 0, 4096, 700_000), /ENOTCONN|EIO|ECONNABORTED/);
    await fh.close().catch(() => {});
    await assert.rejects(open(first.path, "r"), /ENOTCONN/);
    assert.ok(Date.now() - t0 < 2000, "no hang");
    const stale = `${first.dir}/fs`;
    assert.ok(
      (await readMountinfo()).some((m) => m.mountPoint === stale),
      "the dead mount is still there",
    );

    second = await openLazyImage(home, record, "auto");
    assert.ok(!(await readMountinfo()).some((m) => m.mountPoint === stale), "stale mount released");
    assert.ok(!existsSync(first.dir), "stale directory removed");
    assert.ok((await pread(second.path, 700_000, 4096)).equals(data.subarray(700_000, 704_096)));
  } finally {
    await first.close();
    await second?.close();
  }
});

test("a hung daemon is aborted on close: its readers get an error, not a hang", async () => {
  const data = randomBytes(1 << 20);
  const { record } = await indexBytes(home, data, 128 << 10);
  const lazy = await openLazyImage(home, record, "auto");
  try {
    process.kill(lazy.pid, "SIGSTOP");
    const reading = pread(lazy.path, 500_000, 4096).then(
      () => null,
      (err: Error) => err,
    );
    // Opening another image in this home must not block on the stuck one (no stat of its mount).
    const other = await openLazyImage(home, record, "auto");
    await other.close();
    const t0 = Date.now();
    await lazy.close();
    assert.match(String(await reading), /ENOTCONN|ECONNABORTED|EIO/);
    assert.ok(Date.now() - t0 < 10_000);
    assert.ok(!(await readMountinfo()).some((m) => m.mountPoint.startsWith(lazy.dir)));
  } finally {
    try {
      process.kill(lazy.pid, "SIGKILL");
    } catch {
      // already gone
    }
    await lazy.close();
  }
});

test("fetch slots go to chunks a reader waits for before readahead and prefetch", async () => {
  const limiter = new Limiter(1);
  const order: string[] = [];
  let release!: () => void;
  const blocker = limiter.run(() => new Promise<void>((r) => (release = r)));
  const job = (name: string, urgent: boolean) =>
    limiter.run(
      async () => void order.push(name),
      () => urgent,
    );
  const all = [job("readahead-1", false), job("prefetch-2", false), job("reader", true)];
  release();
  await Promise.all([blocker, ...all]);
  assert.deepEqual(order, ["reader", "readahead-1", "prefetch-2"]);
});

test("a sequential reader makes the daemon fetch the next chunks ahead of it", async () => {
  const data = randomBytes(6 << 20);
  const { index, record, chunks } = await indexBytes(home, data, 256 << 10, false);
  const { source, calls } = memorySource(chunks);
  const lazy = await openLazyImage(home, record, source, { prefetch: false, readaheadChunks: 4 });
  try {
    const fh = await open(lazy.path, "r");
    try {
      const buf = Buffer.alloc(128 << 10);
      for (let pos = 0; pos < 2 << 20; pos += buf.length) await fh.read(buf, 0, buf.length, pos);
    } finally {
      await fh.close();
    }
    // Read: [0, 2 MiB); the kernel's own readahead adds at most a few hundred KiB.
    const beyond = () => index.chunks.filter((c) => c.offset >= (5 << 20) / 2 && calls.has(c.digest));
    for (let i = 0; i < 100 && beyond().length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    const s = await lazy.stats();
    assert.ok(beyond().length >= 1, `fetched: ${index.chunks.map((c) => calls.get(c.digest) ?? 0).join("")}`);
    assert.ok(s.readaheadChunks >= 1, `readahead fetched ${s.readaheadChunks} chunks`);
    assert.ok(calls.size < index.chunks.length, "but not the whole image");
  } finally {
    await lazy.close();
  }
});

test("a damaged chunk in the local cache is never served: fetched again, or EIO if the store has no good copy", async () => {
  const data = randomBytes(1 << 20);
  const { index, record, chunks } = await indexBytes(home, data, 256 << 10);
  const target = index.chunks[1];
  const damage = async () => {
    const bad = Buffer.from(chunks.get(target.digest)!);
    bad[1000] ^= 0x55;
    await writeFile(home.blobPath(target.digest), bad);
  };
  await damage();
  const { source, calls } = memorySource(chunks);
  const repaired = await openLazyImage(home, record, source, { prefetch: false, readaheadChunks: 0 });
  try {
    assert.ok(
      (await pread(repaired.path, target.offset, 8192)).equals(
        data.subarray(target.offset, target.offset + 8192),
      ),
    );
    assert.equal(calls.get(target.digest), 1, "refetched from the source");
    assert.ok(
      (await readFile(home.blobPath(target.digest))).equals(chunks.get(target.digest)!),
      "cache repaired",
    );
    assert.ok((await repaired.stats()).verifyFailures >= 1);
  } finally {
    await repaired.close();
  }

  await damage();
  const local = await openLazyImage(home, record, "auto", { prefetch: false, deadlineMs: 1500 });
  try {
    await assert.rejects(pread(local.path, target.offset, 4096), /EIO/);
    assert.ok((await pread(local.path, 0, 4096)).equals(data.subarray(0, 4096)), "other chunks still read");
  } finally {
    await local.close();
  }
});

test("a stuck daemon whose owner died is aborted and killed by the next cleanup", async () => {
  const data = randomBytes(1 << 20);
  const { index, record } = await indexBytes(home, data, 128 << 10);
  // The owner: another process that opens the image, reports the daemon, then waits to be killed.
  const script = path.join(home.root, "owner.mjs");
  await writeFile(
    script,
    `import { openLazyImage } from ${JSON.stringify(new URL("../src/lazy/index.js", import.meta.url).href)};
import { KindlingHome } from ${JSON.stringify(new URL("../src/util/home.js", import.meta.url).href)};
const [home, record, index] = JSON.parse(process.argv[2]);
const lazy = await openLazyImage(new KindlingHome(home), record, "auto", { prefetch: false });
process.stdout.write(JSON.stringify({ pid: lazy.pid, path: lazy.path, dir: lazy.dir }) + "\\n");
setInterval(() => {}, 1000);
`,
  );
  const owner = spawn(process.execPath, [script, JSON.stringify([home.root, record, index])], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const first = await new Promise<string>((resolve, reject) => {
    owner.stdout!.once("data", (d: Buffer) => resolve(d.toString()));
    owner.once("exit", (code) => reject(new Error(`owner exited ${code}`)));
  });
  const daemon = JSON.parse(first) as { pid: number; path: string; dir: string };
  try {
    process.kill(daemon.pid, "SIGSTOP");
    const reading = pread(daemon.path, 300_000, 4096).then(
      () => null,
      (err: Error) => err,
    );
    owner.kill("SIGKILL");
    await new Promise((r) => owner.once("exit", r));
    const t0 = Date.now();
    const released = await cleanupStale(home);
    assert.ok(released.includes(daemon.dir), `released ${released.join(", ")}`);
    assert.match(String(await reading), /ENOTCONN|ECONNABORTED|EIO/);
    assert.ok(Date.now() - t0 < 8000, `took ${Date.now() - t0} ms`);
    assert.ok(!(await readMountinfo()).some((m) => m.mountPoint.startsWith(daemon.dir)));
  } finally {
    owner.kill("SIGKILL");
    try {
      process.kill(daemon.pid, "SIGKILL");
    } catch {
      // gone
    }
  }
});

test("several lazy images of one image at once: each chunk fetched once across daemons, cache shared", async () => {
  const data = randomBytes(2 << 20);
  const { index, record, chunks } = await indexBytes(home, data, 256 << 10, false);
  const { source, calls } = memorySource(chunks, "ok", 50);
  // Opened concurrently: each open's stale sweep must leave the others' starting daemons alone.
  const images = await Promise.all(
    Array.from({ length: 4 }, () => openLazyImage(home, record, source, { prefetch: false })),
  );
  try {
    assert.equal(new Set(images.map((l) => l.path)).size, 4);
    const got = await Promise.all(images.map((l) => readFile(l.path)));
    for (const b of got) assert.ok(b.equals(data));
    // One daemon fetches each chunk; the others wait for its copy (blobs/.fetch-<hex> lock).
    for (const c of index.chunks) assert.equal(calls.get(c.digest), 1, `fetches of chunk at ${c.offset}`);
    const later = await openLazyImage(home, record, source, { prefetch: false });
    images.push(later);
    const before = [...calls.values()].reduce((a, b) => a + b, 0);
    assert.ok((await readFile(later.path)).equals(data));
    assert.equal(
      [...calls.values()].reduce((a, b) => a + b, 0),
      before,
      "a later one reads the shared cache",
    );
  } finally {
    await Promise.all(images.map((l) => l.close()));
  }
  assert.ok(!(await readMountinfo()).some((m) => m.mountPoint.startsWith(home.mounts)));
});

test("shared: one daemon per image for every user; it leaves once its last user is gone", async () => {
  const data = randomBytes(1 << 20);
  const { record } = await indexBytes(home, data, 256 << 10);
  const opts = { shared: { idleMs: 300 } };
  const a = await openLazyImage(home, record, "auto", opts);
  const b = await openLazyImage(home, record, "auto", opts);
  const gone = async (pid: number) => {
    for (let i = 0; i < 100; i++) {
      const st = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => null);
      if (st === null || st.slice(st.lastIndexOf(")") + 2).startsWith("Z")) return true;
      await new Promise((r) => setTimeout(r, 50));
    }
    return false;
  };
  try {
    assert.equal(b.pid, a.pid, "the second open uses the first daemon");
    assert.equal(b.path, a.path);
    await a.close();
    await new Promise((r) => setTimeout(r, 800));
    assert.ok((await pread(b.path, 4096, 4096)).equals(data.subarray(4096, 8192)), "still serving b");
    // A user that died without closing counts for nothing.
    await writeFile(path.join(b.dir, "users", "999999999-1-dead"), "");
  } finally {
    await b.close();
  }
  assert.ok(await gone(a.pid), "the daemon left after its last user");
  assert.ok(!(await readMountinfo()).some((m) => m.mountPoint.startsWith(a.dir)));
  const c = await openLazyImage(home, record, "auto", { shared: { idleMs: 60_000 } });
  try {
    assert.notEqual(c.pid, a.pid, "a new daemon once the old one left");
    assert.ok((await pread(c.path, 0, 4096)).equals(data.subarray(0, 4096)));
    assert.equal(await stopIdleShared(home), 0, "in use: not stopped");
  } finally {
    await c.close();
  }
  assert.equal(await stopIdleShared(home, record.digest), 1, "idle: stopped without waiting");
  assert.ok(await gone(c.pid));
  assert.ok(!(await readMountinfo()).some((m) => m.mountPoint.startsWith(c.dir)));
});

test("chunk lookup is a binary search over variable-size chunks; the superblock parser finds the tables", async () => {
  const { index } = await indexBytes(home, randomBytes(1_000_000), [1, 4096, 77_777, 300_000], false);
  for (const [i, c] of index.chunks.entries()) {
    assert.equal(chunkAt(index, c.offset), i);
    assert.equal(chunkAt(index, c.offset + c.length - 1), i);
  }
  assert.equal(chunkAt(index, index.blockSize), -1);
  assert.deepEqual(chunksIn(index, index.blockSize - 1, 100), [index.chunks.length - 1]);
  assert.deepEqual(chunksIn(index, index.blockSize, 100), []);
  assert.deepEqual(chunksIn(index, 0, 2), [0, 1]);

  const sb = Buffer.alloc(96);
  sb.writeUInt32LE(0x73717368, 0);
  sb.writeUInt16LE(4, 28);
  sb.writeBigUInt64LE(900_000n, 40); // bytes_used
  const tables = [880_000n, 0xffffffffffffffffn, 700_000n, 750_000n, 800_000n, 850_000n];
  for (const [i, v] of tables.entries()) sb.writeBigUInt64LE(v, 48 + i * 8);
  assert.deepEqual(parseSquashfsSuperblock(sb), { bytesUsed: 900_000, tablesStart: 700_000 });
  assert.equal(parseSquashfsSuperblock(Buffer.alloc(96)), null);
});
