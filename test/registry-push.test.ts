import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import type { ImageRecord, RunConfig } from "../src/image/types.js";
import { KINDLING_ARTIFACT_TYPE, KINDLING_CHUNK_MEDIA_TYPE } from "../src/registry/artifact.js";
import { RegistryChunkSource } from "../src/registry/chunks.js";
import { MANIFEST_ACCEPT, sha256Digest } from "../src/registry/manifest.js";
import { pullFromRegistry } from "../src/registry/pull.js";
import { pushKindlingImage } from "../src/registry/push.js";
import { checkPacks, KINDLING_PACK_MEDIA_TYPE } from "../src/store/packs.js";
import { BLOCK_INDEX_MEDIA_TYPE, type BlockIndex, type Digest } from "../src/store/types.js";
import { KindlingError } from "../src/util/errors.js";
import { exec } from "../src/util/exec.js";
import { registryBlobPath, startRegistry, type TestRegistry } from "./helpers/registry.js";

// Push of a converted image as an OCI artifact, pull of it as "kindling", lazy chunk fetches.

const sha = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}` as Digest;

/** A fake converted image: 4 chunks, one repeated (as zero runs are in real block images). */
function fakeImage(name: string) {
  const size = 64 * 1024;
  const distinct = [randomBytes(size), randomBytes(size), Buffer.alloc(size), randomBytes(1000)];
  const order = [0, 2, 1, 2, 3];
  const store = new Map<Digest, Buffer>(distinct.map((b) => [sha(b), b]));
  let offset = 0;
  const chunks = order.map((i) => {
    const b = distinct[i]!;
    const ref = { offset, length: b.length, digest: sha(b) };
    offset += b.length;
    return ref;
  });
  const index: BlockIndex = {
    mediaType: BLOCK_INDEX_MEDIA_TYPE,
    format: "squashfs",
    blockSize: offset,
    blockDigest: sha(Buffer.concat(order.map((i) => distinct[i]!))),
    chunking: { algorithm: "fixed", avgSize: size },
    chunks,
  };
  const indexBytes = Buffer.from(JSON.stringify(index));
  const config: RunConfig = {
    entrypoint: ["/bin/sh"],
    cmd: ["-c", "true"],
    env: ["A=1"],
    workingDir: "/",
    user: "0",
  };
  const record: ImageRecord = {
    name,
    digest: sha(indexBytes),
    blockSize: offset,
    config,
    origin: { kind: "local" },
    created: new Date().toISOString(),
  };
  const reads: Digest[] = [];
  return {
    store,
    reads,
    image: {
      record,
      index: indexBytes,
      readChunk: async (d: Digest) => {
        reads.push(d);
        const b = store.get(d);
        if (!b) throw new Error(`no chunk ${d}`);
        return b;
      },
    },
  };
}

let reg: TestRegistry;
let tmpDir: string;
before(async () => {
  process.env.KINDLING_AUTH_FILE = "/nonexistent/kindling-auth.json";
  tmpDir = await mkdtemp(path.join(os.tmpdir(), "kindling-push-"));
  reg = await startRegistry();
});
after(async () => {
  await reg?.stop();
  if (tmpDir) await rm(tmpDir, { recursive: true, force: true });
});

describe("pushKindlingImage", () => {
  test("pushes an artifact docker-registry accepts; pulling it fetches config + index only", async () => {
    const fake = fakeImage("app");
    const ref = `${reg.host}/kindling/app:v1`;
    const { manifestDigest } = await pushKindlingImage(
      ref,
      { insecure: true, quiet: true, packs: false },
      fake.image,
    );
    assert.equal(fake.reads.length, 4, "each distinct chunk is read once");

    // What the registry stores: an OCI manifest with the artifact type, index first, distinct chunks.
    const res = await fetch(`${reg.url}/v2/kindling/app/manifests/v1`, {
      headers: { accept: MANIFEST_ACCEPT },
    });
    assert.equal(res.headers.get("docker-content-digest"), manifestDigest);
    const manifest = (await res.json()) as {
      artifactType: string;
      layers: { mediaType: string; digest: string }[];
    };
    assert.equal(manifest.artifactType, KINDLING_ARTIFACT_TYPE);
    assert.equal(manifest.layers[0]!.mediaType, BLOCK_INDEX_MEDIA_TYPE);
    assert.equal(manifest.layers[0]!.digest, fake.image.record.digest);
    assert.deepEqual(
      manifest.layers.slice(1).map((l) => l.mediaType),
      Array(4).fill(KINDLING_CHUNK_MEDIA_TYPE),
    );

    const pulled = await pullFromRegistry(ref, { insecure: true, tmpDir, quiet: true });
    assert.equal(pulled.kind, "kindling");
    if (pulled.kind !== "kindling") return;
    assert.equal(pulled.manifestDigest, manifestDigest);
    assert.deepEqual(pulled.index, fake.image.index);
    assert.equal(pulled.indexDigest, fake.image.record.digest);
    assert.deepEqual(pulled.runConfig, fake.image.record.config);
    assert.deepEqual(pulled.origin, {
      kind: "registry",
      registry: reg.host,
      repository: "kindling/app",
      reference: "v1",
      insecure: true,
    });
    assert.deepEqual(await readdir(tmpDir), [], "no layers were downloaded");

    // Another worker fetches chunks lazily from the origin.
    const source = new RegistryChunkSource(pulled.origin);
    assert.equal(source.description, `registry ${reg.host}/kindling/app`);
    for (const [digest, bytes] of fake.store) {
      assert.deepEqual(await source.fetch(digest, bytes.length), bytes);
    }
  });

  test("a startup profile travels in the config blob; the image (index digest) stays the same", async () => {
    const fake = fakeImage("profiled");
    const startupProfile = { image: fake.image.record.digest, chunks: [2, 0] };
    const plain = await pushKindlingImage(
      `${reg.host}/kindling/profiled:a`,
      { insecure: true, quiet: true },
      fake.image,
    );
    const ref = `${reg.host}/kindling/profiled:b`;
    const withProfile = await pushKindlingImage(
      ref,
      { insecure: true, quiet: true },
      { ...fake.image, startupProfile },
    );
    assert.notEqual(withProfile.manifestDigest, plain.manifestDigest, "the config blob differs");
    const pulled = await pullFromRegistry(ref, { insecure: true, tmpDir, quiet: true });
    assert.equal(pulled.kind, "kindling");
    if (pulled.kind !== "kindling") return;
    assert.equal(pulled.indexDigest, fake.image.record.digest);
    assert.deepEqual(pulled.startupProfile, startupProfile);
  });

  test("packs: segments covering the image and the startup pack, listed in the config and as layers, ranged GETs give their chunks", async () => {
    const fake = fakeImage("packed");
    const ref = `${reg.host}/kindling/packed:v1`;
    const index = JSON.parse(fake.image.index.toString()) as BlockIndex;
    const { packs } = await pushKindlingImage(
      ref,
      { insecure: true, quiet: true },
      { ...fake.image, startupChunks: [3, 0] },
    );
    assert.ok(packs);
    const pulled = await pullFromRegistry(ref, { insecure: true, tmpDir, quiet: true });
    assert.equal(pulled.kind, "kindling");
    if (pulled.kind !== "kindling") return;
    const checked = checkPacks(pulled.packs, index, fake.image.record.digest);
    assert.ok("packs" in checked, JSON.stringify(checked));
    assert.deepEqual(checked.packs, packs);
    assert.deepEqual(
      packs.segments.flatMap((s) => s.chunks),
      [0, 1, 2, 3, 4],
    );
    assert.deepEqual(packs.startup?.chunks, [3, 0]);
    const res = await fetch(`${reg.url}/v2/kindling/packed/manifests/v1`, {
      headers: { accept: MANIFEST_ACCEPT },
    });
    const manifest = (await res.json()) as { layers: { mediaType: string; digest: string }[] };
    const packLayers = manifest.layers
      .filter((l) => l.mediaType === KINDLING_PACK_MEDIA_TYPE)
      .map((l) => l.digest);
    assert.deepEqual(packLayers.sort(), [packs.segments[0]!.digest, packs.startup!.digest].sort());
    // The startup pack's second chunk, by range, is chunk 0's bytes.
    const source = new RegistryChunkSource(pulled.origin);
    const c0 = index.chunks[0]!;
    const parts: Buffer[] = [];
    const len3 = index.chunks[3]!.length;
    for await (const p of await source.openRange(
      packs.startup!.digest,
      len3,
      len3 + c0.length,
      AbortSignal.timeout(10_000),
    )) {
      parts.push(Buffer.from(p));
    }
    assert.deepEqual(Buffer.concat(parts), fake.store.get(c0.digest));
  });

  test("startup ranges: with recorded read ranges the startup pack holds those bytes, each range with its digest", async () => {
    const fake = fakeImage("ranged");
    const ref = `${reg.host}/kindling/ranged:v1`;
    const index = JSON.parse(fake.image.index.toString()) as BlockIndex;
    const whole = Buffer.concat(index.chunks.map((c) => fake.store.get(c.digest)!));
    // A range across a chunk boundary, then one inside chunk 0: pack order is as given.
    const c1 = index.chunks[1]!;
    const ranges: [number, number][] = [
      [c1.offset - 10, 30],
      [5, 100],
    ];
    const { packs } = await pushKindlingImage(
      ref,
      { insecure: true, quiet: true },
      { ...fake.image, startupChunks: [3, 0], startupRanges: ranges },
    );
    assert.ok(packs?.startupRanges, "a range pack");
    assert.equal(packs.startup, undefined, "instead of the whole chunks");
    const pulled = await pullFromRegistry(ref, { insecure: true, tmpDir, quiet: true });
    if (pulled.kind !== "kindling") return assert.fail("a Kindling image");
    const checked = checkPacks(pulled.packs, index, fake.image.record.digest);
    assert.ok("packs" in checked, JSON.stringify(checked));
    const rp = checked.packs.startupRanges!;
    assert.deepEqual(
      rp.ranges.map(([o, l]) => [o, l]),
      ranges,
    );
    const expected = ranges.map(([o, l]) => whole.subarray(o, o + l));
    rp.ranges.forEach(([, , hex], i) => {
      assert.equal(`sha256:${hex}`, sha256Digest(expected[i]!));
    });
    const source = new RegistryChunkSource(pulled.origin);
    const parts: Buffer[] = [];
    for await (const p of await source.openRange(rp.digest, 0, rp.size, AbortSignal.timeout(10_000))) {
      parts.push(Buffer.from(p));
    }
    assert.deepEqual(Buffer.concat(parts), Buffer.concat(expected));
  });

  test("pushing again uploads nothing new and gives the same manifest digest", async () => {
    const fake = fakeImage("again");
    const ref = `${reg.host}/kindling/again:v1`;
    const first = await pushKindlingImage(ref, { insecure: true, quiet: true }, fake.image);
    fake.reads.length = 0;
    const second = await pushKindlingImage(
      `${reg.host}/kindling/again:v2`,
      { insecure: true, quiet: true },
      { ...fake.image, knownPacks: first.packs },
    );
    assert.equal(second.manifestDigest, first.manifestDigest);
    assert.deepEqual(fake.reads, [], "existing blobs are skipped after a HEAD");
  });

  test("a lazily pulled image pushed to another repository has its blobs mounted, not read", async () => {
    const fake = fakeImage("lazy");
    await pushKindlingImage(`${reg.host}/kindling/src:v1`, { insecure: true, quiet: true }, fake.image);
    const pulled = await pullFromRegistry(`${reg.host}/kindling/src:v1`, {
      insecure: true,
      tmpDir,
      quiet: true,
    });
    assert.equal(pulled.kind, "kindling");
    if (pulled.kind !== "kindling") return;
    const record = { ...fake.image.record, origin: pulled.origin };
    const noLocalChunks = async (d: Digest): Promise<Buffer> => {
      throw new Error(`chunk ${d} is not local`);
    };
    await pushKindlingImage(
      `${reg.host}/kindling/dst:v1`,
      { insecure: true, quiet: true },
      { record, index: fake.image.index, readChunk: noLocalChunks },
    );
    const dst = new RegistryChunkSource({
      kind: "registry",
      registry: reg.host,
      repository: "kindling/dst",
      reference: "v1",
      insecure: true,
    });
    for (const [digest, bytes] of fake.store) assert.deepEqual(await dst.fetch(digest, bytes.length), bytes);
  });

  test("pushing a lazily pulled image to another registry fetches missing chunks from its origin", async () => {
    const fake = fakeImage("elsewhere");
    await pushKindlingImage(`${reg.host}/kindling/origin:v1`, { insecure: true, quiet: true }, fake.image);
    const pulled = await pullFromRegistry(`${reg.host}/kindling/origin:v1`, {
      insecure: true,
      tmpDir,
      quiet: true,
    });
    assert.equal(pulled.kind, "kindling");
    if (pulled.kind !== "kindling") return;
    const other = await startRegistry();
    try {
      await pushKindlingImage(
        `${other.host}/copy/app:v1`,
        { insecure: true, quiet: true },
        {
          record: { ...fake.image.record, origin: pulled.origin },
          index: fake.image.index,
          readChunk: async (d) => {
            throw new Error(`chunk ${d} is not local`);
          },
        },
      );
      const copy = new RegistryChunkSource({
        kind: "registry",
        registry: other.host,
        repository: "copy/app",
        reference: "v1",
        insecure: true,
      });
      for (const [digest, bytes] of fake.store)
        assert.deepEqual(await copy.fetch(digest, bytes.length), bytes);
    } finally {
      await other.stop();
    }
  });

  test("the registry's garbage collector keeps an artifact's chunks (they are its layers)", async () => {
    const fake = fakeImage("gc");
    await pushKindlingImage(`${reg.host}/kindling/gc:v1`, { insecure: true, quiet: true }, fake.image);
    // An unreferenced blob in the same repository, to show the collector did run.
    const orphan = randomBytes(100);
    const start = await fetch(`${reg.url}/v2/kindling/gc/blobs/uploads/`, { method: "POST" });
    const put = new URL(start.headers.get("location")!, reg.url);
    put.searchParams.set("digest", sha(orphan));
    assert.equal((await fetch(put, { method: "PUT", body: new Uint8Array(orphan) })).status, 201);

    const { stdout } = await exec("docker-registry", ["garbage-collect", reg.configPath]);
    assert.match(stdout, /kindling\/gc: marking manifest/);
    await assert.rejects(stat(registryBlobPath(reg, sha(orphan))));
    for (const digest of [fake.image.record.digest, ...fake.store.keys()]) {
      await stat(registryBlobPath(reg, digest));
    }
  });

  test("a chunk that does not match its digest in the local store is refused", async () => {
    const fake = fakeImage("bad");
    const [victim] = fake.store.keys();
    fake.store.set(victim!, randomBytes(10));
    await assert.rejects(
      pushKindlingImage(`${reg.host}/kindling/bad:v1`, { insecure: true, quiet: true }, fake.image),
      (err: Error) => err instanceof KindlingError && err.message.includes(victim!),
    );
  });
});

describe("RegistryChunkSource", () => {
  test("a missing chunk is an error naming the status and the digest", async () => {
    const source = new RegistryChunkSource({
      kind: "registry",
      registry: reg.host,
      repository: "kindling/app",
      reference: "v1",
      insecure: true,
    });
    const missing = sha(Buffer.from("never pushed"));
    await assert.rejects(
      source.fetch(missing, 12),
      (err: Error) =>
        err instanceof KindlingError && err.message.includes("404") && err.message.includes(missing),
    );
  });

  describe("against a registry that never answers", () => {
    let server: Server;
    let host: string;
    const sockets = new Set<Socket>();
    before(async () => {
      server = createServer((s) => {
        sockets.add(s);
        s.on("error", () => {});
      });
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      const addr = server.address();
      host = `127.0.0.1:${typeof addr === "object" && addr ? addr.port : 0}`;
    });
    after(async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    });
    const origin = () =>
      ({ kind: "registry", registry: host, repository: "x/y", reference: "v1", insecure: true }) as const;

    test("each attempt times out, bounded", async () => {
      const source = new RegistryChunkSource(origin(), { timeoutMs: 200, attempts: 2 });
      const t0 = Date.now();
      await assert.rejects(source.fetch(sha(Buffer.from("a")), 1), /no answer within 0.2 s/);
      assert.ok(Date.now() - t0 < 3000);
    });

    test("an AbortSignal stops a fetch in flight", async () => {
      const source = new RegistryChunkSource(origin(), { timeoutMs: 10_000 });
      const ctl = new AbortController();
      setTimeout(() => ctl.abort(), 100);
      const t0 = Date.now();
      await assert.rejects(
        source.fetch(sha(Buffer.from("a")), 1, ctl.signal),
        (err: Error) => err.name === "AbortError",
      );
      assert.ok(Date.now() - t0 < 2000);
    });
  });
});
