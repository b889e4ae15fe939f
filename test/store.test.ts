import assert from "node:assert/strict";
import { createCipheriv } from "node:crypto";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { importImage } from "../src/image/import.js";
import { removeImage } from "../src/image/remove.js";
import { hasBlob } from "../src/store/blobs.js";
import { encodeBlockIndex, readBlockIndex } from "../src/store/blockindex.js";
import { canonicalJson } from "../src/store/canonical.js";
import { listImages, loadImage, recordFileName, saveImage } from "../src/store/catalog.js";
import { chunkFile, fastcdcSpec } from "../src/store/chunker.js";
import { LocalChunkSource, localBytes } from "../src/store/local.js";
import { imageNameProblem } from "../src/store/names.js";
import { BLOCK_INDEX_MEDIA_TYPE, type BlockIndex } from "../src/store/types.js";
import { fixture, tempHome } from "./helpers/fixtures.js";

const quiet = { progress: false };

async function blobCount(home: { blobs: string }): Promise<number> {
  return (await readdir(home.blobs)).filter((n) => /^[0-9a-f]{64}$/.test(n)).length;
}

describe("chunking", () => {
  test("FastCDC cuts are content-defined: an insertion near the start leaves later chunks alone", async () => {
    const dir = await mkdtemp("/tmp/kindling-test-cdc-");
    try {
      // Deterministic pseudo-random bytes (AES-CTR keystream), so the cut points are the same every run.
      const stream = (seed: number, n: number) =>
        createCipheriv("aes-128-ctr", Buffer.alloc(16, seed), Buffer.alloc(16)).update(Buffer.alloc(n));
      const data = stream(1, 8 << 20);
      const shifted = Buffer.concat([data.subarray(0, 1000), stream(2, 777), data.subarray(1000)]);
      await writeFile(path.join(dir, "a"), data);
      await writeFile(path.join(dir, "b"), shifted);
      const spec = fastcdcSpec(256 * 1024);
      const a = await chunkFile(path.join(dir, "a"), spec);
      const b = await chunkFile(path.join(dir, "b"), spec);
      // Contiguous, bounded, covering.
      let off = 0;
      for (const c of a) {
        assert.equal(c.offset, off);
        assert.ok(c.length <= spec.maxSize!);
        off += c.length;
      }
      assert.equal(off, data.length);
      assert.deepEqual(await chunkFile(path.join(dir, "a"), spec), a, "deterministic");
      const inA = new Set(a.map((c) => c.digest));
      const shared = b.filter((c) => inA.has(c.digest)).reduce((s, c) => s + c.length, 0);
      assert.ok(shared > data.length * 0.85, `shared ${shared} of ${data.length}`);
      // Fixed-size chunks share nothing after the insertion point.
      const fa = await chunkFile(path.join(dir, "a"), { algorithm: "fixed", avgSize: 256 * 1024 });
      const fb = await chunkFile(path.join(dir, "b"), { algorithm: "fixed", avgSize: 256 * 1024 });
      const fInA = new Set(fa.map((c) => c.digest));
      assert.equal(fb.filter((c) => fInA.has(c.digest)).length, 0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("the index is canonical JSON: key order does not change its bytes", () => {
    const index: BlockIndex = {
      mediaType: BLOCK_INDEX_MEDIA_TYPE,
      format: "squashfs",
      blockSize: 3,
      blockDigest: `sha256:${"a".repeat(64)}`,
      chunking: { algorithm: "fixed", avgSize: 3 },
      chunks: [{ offset: 0, length: 3, digest: `sha256:${"b".repeat(64)}` }],
    };
    const reverse = (v: unknown): unknown =>
      Array.isArray(v)
        ? v.map(reverse)
        : v && typeof v === "object"
          ? Object.fromEntries(
              Object.entries(v)
                .reverse()
                .map(([k, x]) => [k, reverse(x)]),
            )
          : v;
    const shuffled = reverse(index) as BlockIndex;
    assert.notEqual(JSON.stringify(shuffled), JSON.stringify(index));
    assert.deepEqual(encodeBlockIndex(shuffled), encodeBlockIndex(index));
    assert.equal(canonicalJson({ b: 1, a: [{ d: 1, c: 2 }] }), '{"a":[{"c":2,"d":1}],"b":1}');
  });

  test("image names follow the OCI reference grammar", () => {
    for (const ok of [
      "bb",
      "bb-tag",
      "multilayer-oci:v1",
      "127.0.0.1:5000/team/app:v1",
      "localhost/x",
      "a.b/c_d__e",
      `x@sha256:${"a".repeat(64)}`,
    ]) {
      assert.equal(imageNameProblem(ok), null, ok);
    }
    for (const bad of [
      "",
      "a\nb",
      "/x",
      "./bb",
      "../x",
      "a/../b",
      "a//b",
      "a/",
      "UPPER",
      "-x",
      "x:",
      "x:-t",
      "x@sha256:12",
      "a b",
    ]) {
      assert.ok(imageNameProblem(bad), JSON.stringify(bad));
    }
  });

  test("image names that are registry references map to safe file names", () => {
    for (const name of ["127.0.0.1:5000/a/b:tag", "..", ".", "a/../../x", "x@sha256:abc"]) {
      const f = recordFileName(name);
      assert.ok(!f.includes("/") && f !== "..json" && !f.startsWith("."), f);
    }
    assert.notEqual(recordFileName("a/b"), recordFileName("a%2Fb"));
  });
});

describe("local store", () => {
  let home: Awaited<ReturnType<typeof tempHome>>;
  before(async () => {
    home = await tempHome();
  });
  after(async () => {
    await home.remove();
  });

  test("two concurrent imports of the same image leave a consistent store", async () => {
    const oci = `${await fixture("multilayer-oci")}:v1`;
    const [a, b, c] = await Promise.all([
      importImage(home, oci, { name: "same", ...quiet }),
      importImage(home, oci, { name: "same", ...quiet }),
      importImage(home, oci, { name: "other", ...quiet }),
    ]);
    assert.equal(a.digest, b.digest);
    assert.equal(a.digest, c.digest);
    const rec = await loadImage(home, "same");
    const index = await readBlockIndex(home, rec.digest);
    assert.equal(await localBytes(home, index), index.blockSize);
    const src = new LocalChunkSource(home);
    for (const ch of index.chunks) assert.equal((await src.fetch(ch.digest, ch.length)).length, ch.length);
    // No temp files left behind.
    assert.deepEqual(
      (await readdir(home.blobs)).filter((n) => n.startsWith(".tmp-")),
      [],
    );
    assert.deepEqual(
      (await listImages(home)).map((r) => r.name),
      ["other", "same"],
    );
  });

  test("rm deletes unreferenced chunks only; chunks shared with other images stay", async () => {
    const minbase = await importImage(home, await fixture("debian-minbase.tar"), {
      name: "minbase",
      ...quiet,
    });
    const plus = await importImage(home, await fixture("debian-minbase-plus.tar"), {
      name: "plus",
      ...quiet,
    });
    const iMin = await readBlockIndex(home, minbase.digest);
    const iPlus = await readBlockIndex(home, plus.digest);
    const minChunks = new Set(iMin.chunks.map((c) => c.digest));
    const sharedChunks = iPlus.chunks.filter((c) => minChunks.has(c.digest));
    assert.ok(sharedChunks.length > 0, "related images share chunks");
    const before = await blobCount(home);

    // Same digest under two names: removing one name frees nothing.
    await removeImage(home, "other");
    assert.equal(await blobCount(home), before);

    const freed = await removeImage(home, "plus");
    assert.ok(freed.blobs > 0);
    assert.ok(!(await hasBlob(home, plus.digest)), "the index blob went away");
    for (const c of iPlus.chunks) assert.equal(await hasBlob(home, c.digest), minChunks.has(c.digest));
    assert.equal(await localBytes(home, iMin), iMin.blockSize, "minbase is whole");
    assert.equal(await blobCount(home), before - freed.blobs);
    await assert.rejects(removeImage(home, "plus"), /no image named "plus"/);

    await removeImage(home, "minbase");
    await removeImage(home, "same");
    assert.equal(await blobCount(home), 0);
  });

  test("saveImage/loadImage keep a record under a name with '/' and ':'", async () => {
    const rec = {
      name: "127.0.0.1:5000/team/app:v1",
      digest: `sha256:${"c".repeat(64)}` as const,
      blockSize: 1,
      config: { entrypoint: [], cmd: [], env: [], workingDir: "/", user: "" },
      origin: { kind: "local" as const },
      created: new Date(0).toISOString(),
    };
    await saveImage(home, rec);
    assert.deepEqual(await loadImage(home, rec.name), rec);
    assert.ok((await listImages(home)).some((r) => r.name === rec.name));
  });
});

describe("re-import under the same name", () => {
  test("replaces the image and frees the chunks only the old one used", async () => {
    const home = await tempHome();
    try {
      const first = await importImage(home, await fixture("busybox-rootfs.tar"), { name: "x", ...quiet });
      const second = await importImage(home, `${await fixture("multilayer-oci")}:v1`, {
        name: "x",
        ...quiet,
      });
      assert.notEqual(first.digest, second.digest);
      assert.equal(await hasBlob(home, first.digest), false);
      const index = await readBlockIndex(home, second.digest);
      assert.equal(await blobCount(home), new Set(index.chunks.map((c) => c.digest)).size + 1);
    } finally {
      await home.remove();
    }
  });
});
