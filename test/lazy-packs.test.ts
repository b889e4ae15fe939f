// Packs (src/chunks/packs.ts): many chunks per request from a real docker-registry on 127.0.0.1,
// through a real FUSE lazy file. A counting HTTP proxy in front of the registry tells requests apart.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileReader, readSquashfsFiles } from "../src/blockimage/layout.js";
import { cleanupStale, type LazyImage, openLazyImage } from "../src/lazy/index.js";
import { writeProfile } from "../src/lazy/profile.js";
import {
  checkPacks,
  type ImagePacks,
  type PackDesc,
  planSegments,
  planStartupRanges,
  type RangePackDesc,
  writePacks,
} from "../src/store/packs.js";
import type { BlockIndex, Digest } from "../src/store/types.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { indexBytes } from "./helpers/blockindex.js";
import { startRegistry, type TestRegistry } from "./helpers/registry.js";

const CHUNK = 128 << 10;
const repository = "lazy/packs";
let tmp: string;
let registry: TestRegistry;
let proxy: http.Server;
let proxyHost: string;
/** Requests through the proxy: "GET /v2/.../blobs/sha256:..." plus " range" for ranged ones. */
const seen: string[] = [];
/** Blob digests the proxy never answers. */
const stalled = new Set<string>();

before(async () => {
  tmp = await mkdtemp("/tmp/kindling-lazy-packs-");
  registry = await startRegistry();
  const [rhost, rport] = registry.host.split(":");
  proxy = http.createServer((req, res) => {
    seen.push(`${req.method} ${req.url}${req.headers.range ? " range" : ""}`);
    // A blob that stalls: no answer at all (the connection stays open until the teardown).
    if ([...stalled].some((d) => req.url?.includes(d))) return;
    const up = http.request(
      { host: rhost, port: Number(rport), path: req.url, method: req.method, headers: req.headers },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
  proxyHost = `127.0.0.1:${(proxy.address() as AddressInfo).port}`;
});
after(async () => {
  await new Promise((r) => proxy.close(r));
  proxy.closeAllConnections();
  await registry.stop();
  for (const h of ["a", "b", "c", "d", "e", "f", "g", "h"])
    await cleanupStale(new KindlingHome(path.join(tmp, h))).catch(() => {});
  await rm(tmp, { recursive: true, force: true });
});

const sha = (b: Uint8Array): Digest => `sha256:${createHash("sha256").update(b).digest("hex")}`;

async function upload(data: Buffer): Promise<Digest> {
  const digest = sha(data);
  const start = await fetch(`${registry.url}/v2/${repository}/blobs/uploads/`, { method: "POST" });
  assert.equal(start.status, 202);
  const loc = new URL(start.headers.get("location")!, registry.url);
  loc.searchParams.set("digest", digest);
  const put = await fetch(loc, { method: "PUT", body: new Uint8Array(data) });
  assert.equal(put.status, 201, await put.text());
  return digest;
}

/** A pack of `chunks` as push makes it (or, with `bytes`, a blob that claims to be one). */
async function pack(index: BlockIndex, chunks: number[], data: Buffer, bytes?: Buffer): Promise<PackDesc> {
  const body =
    bytes ??
    Buffer.concat(
      chunks.map((i) =>
        data.subarray(index.chunks[i].offset, index.chunks[i].offset + index.chunks[i].length),
      ),
    );
  return { digest: await upload(body), size: body.length, chunks };
}

/** A home that pulled the image: index and record (origin: the registry behind the proxy), no chunks. */
async function pulledHome(name: string, data: Buffer) {
  const home = new KindlingHome(path.join(tmp, name)).ensure();
  const made = await indexBytes(home, data, CHUNK, false);
  made.record.origin = { kind: "registry", registry: proxyHost, repository, reference: "t", insecure: true };
  for (const [, bytes] of made.chunks) await upload(bytes);
  return { home, ...made };
}

const blobGets = () => seen.filter((s) => s.startsWith("GET ") && s.includes("/blobs/"));

async function until(what: string, cond: () => Promise<boolean>, ms = 20_000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; ) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`timed out waiting for ${what}`);
}

test("planSegments cuts an index into runs of consecutive chunks covering it once; checkPacks sorts good from bad", async () => {
  const home = new KindlingHome(path.join(tmp, "plan")).ensure();
  const { index, record } = await indexBytes(home, randomBytes(48 << 20), CHUNK, false);
  const segs = planSegments(index);
  assert.ok(segs.length >= 2, "48 MiB makes more than one segment");
  assert.deepEqual(
    segs.flat(),
    index.chunks.map((_, i) => i),
  );
  const d = `sha256:${"a".repeat(64)}` as Digest;
  const good: ImagePacks = {
    image: record.digest,
    segments: [{ digest: d, size: CHUNK * 2, chunks: [0, 1] }],
  };
  assert.ok("packs" in checkPacks(good, index, record.digest));
  assert.ok("stale" in checkPacks({ ...good, image: d }, index, record.digest));
  for (const bad of [
    { image: record.digest },
    { ...good, segments: [{ digest: "sha256:zz", size: CHUNK, chunks: [0] }] },
    { ...good, segments: [{ digest: d, size: CHUNK + 1, chunks: [0] }] },
    { ...good, segments: [{ digest: d, size: CHUNK, chunks: [index.chunks.length] }] },
    { ...good, startup: { digest: d, size: 1, chunks: [] } },
  ]) {
    assert.ok("corrupt" in checkPacks(bad, index, record.digest), JSON.stringify(bad).slice(0, 200));
  }
});

test("a sequential reader of a lazy file with segments fetches them as ranged requests, each chunk verified", async () => {
  const data = randomBytes(24 << 20);
  const { home, index, record } = await pulledHome("a", data);
  const segments = [];
  for (const list of planSegments(index)) segments.push(await pack(index, list, data));
  await writePacks(home, { image: record.digest, segments });
  seen.length = 0;
  const lazy = await openLazyImage(home, record, "auto", { prefetch: false });
  try {
    const got = await readSequential(lazy);
    assert.ok(got.equals(data), "every byte as pushed");
    const s = await lazy.stats();
    assert.equal(s.bytesFetched, data.length, "each chunk fetched once");
    assert.equal(s.verifyFailures, 0);
    const ranged = blobGets().filter((g) => g.endsWith(" range")).length;
    assert.ok(ranged >= 1, "ranged requests were made");
    assert.ok(
      blobGets().length < index.chunks.length / 4,
      `${blobGets().length} blob GETs for ${index.chunks.length} chunks`,
    );
  } finally {
    await lazy.close();
  }
});

test("a stream stops at the end of the file read (the image's layout): the next file is not fetched", async () => {
  // A SquashFS of two incompressible 8 MiB files, stored one after the other.
  const src = path.join(tmp, "two-files");
  await mkdir(src);
  await writeFile(path.join(src, "a.bin"), randomBytes(8 << 20));
  await writeFile(path.join(src, "b.bin"), randomBytes(8 << 20));
  const file = path.join(tmp, "two-files.sqfs");
  await exec("mksquashfs", [src, file, "-noappend", "-quiet", "-no-progress"]);
  const data = await readFile(file);
  const fh = await open(file, "r");
  const { files } = await readSquashfsFiles(fileReader(fh), { names: true }).finally(() => fh.close());
  const [a, b] = ["a.bin", "b.bin"].map((n) => files.find((f) => f.path === n)!);
  assert.ok(a.end <= b.start, "a.bin's blocks lie before b.bin's");
  const { home, index, record } = await pulledHome("h", data);
  const segments = [];
  for (const list of planSegments(index)) segments.push(await pack(index, list, data));
  await writePacks(home, { image: record.digest, segments });
  const lazy = await openLazyImage(home, record, "auto", { prefetch: false });
  try {
    // a.bin's blocks in order, 128 KiB at a time, as squashfs asks for them through a loop device.
    // Once the run covers 4 MiB the daemon reads the layout (from the image's tables): wait for it.
    const lf = await open(lazy.path, "r");
    try {
      const got = Buffer.alloc(a.end - a.start);
      for (let pos = a.start; pos < a.end; pos += 128 << 10) {
        const len = Math.min(128 << 10, a.end - pos);
        await lf.read(got, pos - a.start, len, pos);
        if (pos - a.start === 5 << 20) {
          const log = path.join(lazy.dir, "daemon.log");
          await until("the daemon to read the layout", async () =>
            (await readFile(log, "utf8").catch(() => "")).includes("file layout read: 2 files"),
          );
        }
      }
      assert.ok(got.equals(data.subarray(a.start, a.end)), "a.bin's blocks as pushed");
    } finally {
      await lf.close();
    }
    await until("the stream to end", async () => (await lazy.stats()).inFlight === 0);
    // What was fetched: a.bin's chunks, those the kernel's own readahead on the lazy file (read
    // through the page cache here) reads past a.bin's end (up to 128 KiB), and the chunk at b.bin's
    // end that holds the tables (the layout). Without the bound, the stream ran 2 MiB into b.bin.
    const fetched = (await lazy.stats()).bytesFetched;
    const allowed = a.end + (512 << 10) + CHUNK;
    assert.ok(
      fetched <= allowed,
      `${fetched} bytes fetched, at most ${allowed} expected (a.bin ends at ${a.end})`,
    );
  } finally {
    await lazy.close();
  }
});

test("a pack whose bytes are not its chunks: each chunk is refused and fetched alone, reads stay right", async () => {
  const data = randomBytes(12 << 20);
  const { home, index, record } = await pulledHome("b", data);
  // One segment over every chunk whose stored bytes are random: every chunk in it fails its digest.
  const all = index.chunks.map((_, i) => i);
  const bogus = randomBytes(data.length);
  await writePacks(home, { image: record.digest, segments: [await pack(index, all, data, bogus)] });
  const lazy = await openLazyImage(home, record, "auto", { prefetch: false });
  try {
    assert.ok((await readSequential(lazy)).equals(data));
    const s = await lazy.stats();
    assert.ok(s.verifyFailures >= 1, "the pack's bad bytes were caught");
    assert.equal(s.bytesFetched, data.length);
  } finally {
    await lazy.close();
  }
});

test("a cold start with a startup pack fetches the profile's chunks in one request before any read", async () => {
  const data = randomBytes(8 << 20);
  const { home, index, record } = await pulledHome("c", data);
  const profile = [40, 3, 17, 60, 0, 1, 2];
  const startup = await pack(index, profile, data);
  await writePacks(home, { image: record.digest, segments: [], startup });
  await writeProfile(home, { image: record.digest, chunks: profile });
  seen.length = 0;
  const lazy = await openLazyImage(home, record, "auto");
  try {
    await until("the startup pack", async () => (await lazy.stats()).profile.state === "done");
    const s = await lazy.stats();
    assert.equal(s.profile.chunks, profile.length);
    assert.equal(s.profile.errors, 0);
    assert.equal(blobGets().filter((g) => g.includes(startup.digest)).length, 1, "one request for the pack");
    // Reading a profiled chunk now needs no fetch.
    const before = (await lazy.stats()).chunksFetched;
    const fh = await open(lazy.path, "r");
    const buf = Buffer.alloc(4096);
    await fh.read(buf, 0, 4096, index.chunks[17].offset);
    await fh.close();
    assert.ok(buf.equals(data.subarray(index.chunks[17].offset, index.chunks[17].offset + 4096)));
    assert.equal((await lazy.stats()).chunksFetched, before);
  } finally {
    await lazy.close();
  }
});

test("a corrupt packs file is ignored with a warning; reads work chunk by chunk", async () => {
  const data = randomBytes(2 << 20);
  const { home, record } = await pulledHome("d", data);
  await writePacks(home, {
    image: record.digest,
    segments: [{ digest: "nonsense" }],
  } as unknown as ImagePacks);
  const lazy = await openLazyImage(home, record, "auto", { prefetch: false });
  try {
    assert.ok((await readFile(lazy.path)).equals(data));
    const log = await readFile(path.join(lazy.dir, "daemon.log"), "utf8");
    assert.match(log, /warning: ignoring the packs of test: segment 0: no sha256 digest/);
  } finally {
    await lazy.close();
  }
});

/** A startup range pack over `ranges` of `data` as push makes it; `corrupt`: those ranges' stored bytes flipped. */
async function rangePack(
  data: Buffer,
  ranges: [number, number][],
  corrupt: number[] = [],
): Promise<RangePackDesc> {
  const parts = ranges.map(([o, l]) => data.subarray(o, o + l));
  const stored = parts.map((p, i) => (corrupt.includes(i) ? Buffer.from(p.map((b) => b ^ 0xff)) : p));
  const body = Buffer.concat(stored);
  return {
    digest: await upload(body),
    size: body.length,
    ranges: ranges.map(([o, l], i) => [o, l, sha(parts[i]!).slice(7)]),
  };
}

/** A 4 KiB read at `pos` through the lazy file. */
async function read4k(lazy: LazyImage, pos: number): Promise<Buffer> {
  const fh = await open(lazy.path, "r");
  try {
    const buf = Buffer.alloc(4096);
    await fh.read(buf, 0, 4096, pos);
    return buf;
  } finally {
    await fh.close();
  }
}

test("startup ranges: one request for the recorded byte ranges; reads inside them fetch no chunk, reads outside do", async () => {
  const data = randomBytes(8 << 20);
  const { home, record } = await pulledHome("e", data);
  const MiB = 1 << 20;
  const ranges: [number, number][] = [
    [5 * MiB, 2 * MiB],
    [0, 2 * MiB],
  ];
  const startupRanges = await rangePack(data, ranges);
  await writePacks(home, { image: record.digest, segments: [], startupRanges });
  await writeProfile(home, { image: record.digest, chunks: [0] });
  seen.length = 0;
  const lazy = await openLazyImage(home, record, "auto");
  try {
    await until("the startup ranges and the tables' prefetch", async () => {
      const s = await lazy.stats();
      return s.profile.state === "done" && ["done", "skipped", "failed"].includes(s.prefetch.state);
    });
    const s = await lazy.stats();
    assert.equal(s.profile.ranges, 2);
    assert.equal(s.profile.bytes, 4 * MiB);
    assert.equal(blobGets().filter((g) => g.includes(startupRanges.digest)).length, 1, "one request");
    const before = s.chunksFetched;
    for (const pos of [MiB, 6 * MiB + 4096]) {
      assert.ok((await read4k(lazy, pos)).equals(data.subarray(pos, pos + 4096)), `bytes at ${pos}`);
    }
    assert.equal((await lazy.stats()).chunksFetched, before, "served from the ranges");
    // Outside every range: the chunk path.
    assert.ok((await read4k(lazy, 3 * MiB)).equals(data.subarray(3 * MiB, 3 * MiB + 4096)));
    assert.ok((await lazy.stats()).chunksFetched > before, "a chunk was fetched");
  } finally {
    await lazy.close();
  }
});

test("a startup range whose bytes do not match its digest is read through chunks; reads stay right", async () => {
  const data = randomBytes(4 << 20);
  const { home, record } = await pulledHome("f", data);
  const MiB = 1 << 20;
  const startupRanges = await rangePack(
    data,
    [
      [0, MiB],
      [2 * MiB, MiB],
    ],
    [1],
  );
  await writePacks(home, { image: record.digest, segments: [], startupRanges });
  await writeProfile(home, { image: record.digest, chunks: [0] });
  const lazy = await openLazyImage(home, record, "auto");
  try {
    await until("the startup ranges", async () => (await lazy.stats()).profile.state === "done");
    const s = await lazy.stats();
    assert.equal(s.profile.ranges, 1, "the good range arrived");
    assert.ok(s.verifyFailures >= 1, "the bad one was caught");
    const pos = 2 * MiB + 8192;
    assert.ok((await read4k(lazy, pos)).equals(data.subarray(pos, pos + 4096)), "right bytes, from chunks");
    assert.match(await readFile(path.join(lazy.dir, "daemon.log"), "utf8"), /does not match its digest/);
  } finally {
    await lazy.close();
  }
});

test("a startup ranges request that stalls: a read inside a range is served through chunks after one attempt's time", async () => {
  const data = randomBytes(2 << 20);
  const { home, record } = await pulledHome("g", data);
  const startupRanges = await rangePack(data, [[0, 1 << 20]]);
  await writePacks(home, { image: record.digest, segments: [], startupRanges });
  await writeProfile(home, { image: record.digest, chunks: [0] });
  stalled.add(startupRanges.digest);
  const lazy = await openLazyImage(home, record, "auto", { attemptTimeoutMs: 1000, deadlineMs: 5000 });
  try {
    const pos = 300_000;
    assert.ok((await read4k(lazy, pos)).equals(data.subarray(pos, pos + 4096)), "right bytes, from chunks");
    const s = await lazy.stats();
    assert.equal(s.profile.state, "done");
    assert.equal(s.profile.ranges, 0, "no range arrived");
    assert.ok(s.chunksFetched >= 1);
    assert.match(
      await readFile(path.join(lazy.dir, "daemon.log"), "utf8"),
      /startup ranges: .*not done within 1000 ms/,
    );
  } finally {
    stalled.clear();
    await lazy.close();
  }
});

test("planStartupRanges merges close reads, orders by first read; checkPacks refuses bad startup ranges", async () => {
  assert.deepEqual(
    planStartupRanges(
      [
        [100_000, 110_000],
        [0, 4096],
        [112_000, 120_000],
        [2048, 8192],
        [1 << 30, (1 << 30) + 10],
      ],
      1 << 20,
    ),
    [
      [100_000, 20_000],
      [0, 8192],
    ],
  );
  // Bounded in bytes: the earliest ranges that fit in 64 MiB.
  assert.deepEqual(
    planStartupRanges(
      [
        [0, 40 << 20],
        [100 << 20, 140 << 20],
        [50 << 20, (50 << 20) + 4096],
      ],
      1 << 30,
    ),
    [[0, 40 << 20]],
  );
  const home = new KindlingHome(path.join(tmp, "plan-ranges")).ensure();
  const { index, record } = await indexBytes(home, randomBytes(1 << 20), CHUNK, false);
  const hex = "b".repeat(64);
  const d = `sha256:${"a".repeat(64)}` as Digest;
  const good = { digest: d, size: 300, ranges: [[100, 200, hex] as [number, number, string], [0, 100, hex]] };
  const ok = checkPacks({ image: record.digest, segments: [], startupRanges: good }, index, record.digest);
  assert.ok("packs" in ok && ok.packs.startupRanges, JSON.stringify(ok));
  for (const bad of [
    { ...good, size: 301 },
    {
      ...good,
      ranges: [
        [0, 200, hex],
        [100, 200, hex],
      ],
      size: 400,
    },
    { ...good, ranges: [[(1 << 20) - 10, 20, hex]], size: 20 },
    { ...good, ranges: [[0, 10, "xyz"]], size: 10 },
    { ...good, ranges: [[0, 0, hex]], size: 0 },
    { ...good, digest: "nope" },
    { ...good, ranges: [[0, (64 << 20) + 1, hex]], size: (64 << 20) + 1 },
  ]) {
    const r = checkPacks({ image: record.digest, segments: [], startupRanges: bad }, index, record.digest);
    assert.ok("corrupt" in r, JSON.stringify(bad));
  }
});

/** Reads the lazy file front to back in 128 KiB reads, as a loop device under squashfs would. */
async function readSequential(lazy: LazyImage): Promise<Buffer> {
  const fh = await open(lazy.path, "r");
  try {
    const { size } = await fh.stat();
    const out = Buffer.alloc(size);
    for (let pos = 0; pos < size; pos += 128 << 10) {
      await fh.read(out, pos, Math.min(128 << 10, size - pos), pos);
    }
    return out;
  } finally {
    await fh.close();
  }
}
