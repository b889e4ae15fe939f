import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { link, mkdir, mkdtemp, open, readFile, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileReader, LayoutError, readSquashfsFiles } from "../src/blockimage/layout.js";
import { lz4DecompressBlock } from "../src/blockimage/lz4.js";
import { sortFileText, startupFiles } from "../src/blockimage/sortlist.js";
import { buildSquashfs } from "../src/blockimage/squashfs.js";
import { exec } from "../src/util/exec.js";

/** A tree with what the parser must step over: links, a fifo, a big file, a directory of 600 entries. */
async function makeTree(root: string): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  const put = async (rel: string, data: Buffer) => {
    await mkdir(path.dirname(path.join(root, rel)), { recursive: true });
    await writeFile(path.join(root, rel), data);
    files.set(rel, data);
  };
  await put("bin/big", randomBytes(700_000)); // several blocks and a tail
  await put("bin/big2", randomBytes(300_000));
  await put("etc/empty", Buffer.alloc(0));
  await put("etc/text", Buffer.from("kindling\n".repeat(5000)));
  for (let i = 0; i < 600; i++) await put(`many/file-${String(i).padStart(3, "0")}`, randomBytes(i * 7));
  await link(path.join(root, "etc/text"), path.join(root, "etc/text-link"));
  await symlink("text", path.join(root, "etc/sym"));
  await exec("mkfifo", [path.join(root, "etc/fifo")]);
  return files;
}

describe("block image layout (file extents from the SquashFS tables)", () => {
  let work: string;
  let files: Map<string, Buffer>;
  before(async () => {
    work = await mkdtemp("/tmp/kindling-test-layout-");
    files = await makeTree(path.join(work, "src"));
  });
  after(async () => {
    await rm(work, { recursive: true, force: true });
  });

  const parse = async (img: string, names: boolean) => {
    const fh = await open(img, "r");
    try {
      return await readSquashfsFiles(fileReader(fh), { names });
    } finally {
      await fh.close();
    }
  };

  for (const comp of ["zstd", "gzip", "lz4"] as const) {
    test(`${comp}: every regular file once, with its path and size, extents in order inside the image`, async () => {
      const img = path.join(work, `${comp}.sqfs`);
      await buildSquashfs(path.join(work, "src"), img, { compressor: comp, blockSize: 128 * 1024 });
      const size = (await readFile(img)).length;
      const got = await parse(img, true);
      assert.equal(got.blockSize, 128 * 1024);
      // The hard link is one inode, named once (by whichever name the walk meets first).
      assert.equal(got.files.length, files.size);
      const seen = new Set<string>();
      let lastEnd = 0;
      for (const f of got.files) {
        assert.ok(f.path && files.has(f.path), `unknown path ${f.path}`);
        seen.add(f.path);
        assert.equal(f.size, files.get(f.path)!.length, f.path);
        if (f.end > f.start) {
          assert.ok(f.start >= 96 && f.end <= size, `${f.path} ${f.start}-${f.end}`);
          assert.ok(f.start >= lastEnd, "data extents do not overlap");
          lastEnd = f.end;
        }
      }
      assert.equal(seen.size, files.size);
      const big = got.files.find((f) => f.path === "bin/big")!;
      assert.ok(big.end - big.start > 500_000, "the big file's blocks are in its extent");
      // mksquashfs packs files smaller than a block into fragment blocks.
      const small = got.files.find((f) => f.path === "etc/text" || f.path === "etc/text-link")!;
      assert.ok(small.fragment && small.end === small.start, "a small file lies in a fragment block");
      // Without names: the same extents.
      const bare = await parse(img, false);
      assert.deepEqual(
        bare.files.map((f) => [f.start, f.end]),
        got.files.map((f) => [f.start, f.end]),
      );
    });
  }

  test("uncompressed data without fragments: each extent holds exactly the file's bytes", async () => {
    const img = path.join(work, "raw.sqfs");
    await buildSquashfs(path.join(work, "src"), img, {
      compressor: "none",
      extraArgs: ["-no-fragments"],
    });
    const bytes = await readFile(img);
    const got = await parse(img, true);
    for (const f of got.files) {
      if (f.size === 0) continue;
      assert.ok(bytes.subarray(f.start, f.end).equals(files.get(f.path!)!), f.path);
    }
  });

  test("lz4 blocks: literals and overlapping matches; a bad offset or an oversized block is an error", () => {
    const lit = Buffer.from([0x40, ...Buffer.from("abcd")]);
    assert.equal(lz4DecompressBlock(lit, 8192).toString(), "abcd");
    // "ab", then a match 2 back of 4 + 2 bytes (it overlaps what it writes), then literals "z".
    const run = Buffer.from([0x22, 0x61, 0x62, 0x02, 0x00, 0x10, 0x7a]);
    assert.equal(lz4DecompressBlock(run, 8192).toString(), "ababababz");
    assert.throws(() => lz4DecompressBlock(Buffer.from([0x10, 0x61, 0x00, 0x00]), 8192), /match before/);
    assert.throws(() => lz4DecompressBlock(run, 4), /larger than 4 bytes/);
    assert.throws(() => lz4DecompressBlock(Buffer.from([0xf0, 0xff]), 8192), /truncated length/);
  });

  test("not SquashFS, or metadata in a compressor it cannot read: a LayoutError", async () => {
    await assert.rejects(
      readSquashfsFiles(async (_p, len) => Buffer.alloc(len)),
      (e) => e instanceof LayoutError && /not a SquashFS image/.test(e.message),
    );
    const img = path.join(work, "xz.sqfs");
    await buildSquashfs(path.join(work, "src"), img, { compressor: "xz" });
    await assert.rejects(parse(img, false), (e) => e instanceof LayoutError && /xz/.test(e.message));
  });

  test("a sort file from a startup set puts those files first, in its order", async () => {
    const img = path.join(work, "plain.sqfs");
    await buildSquashfs(path.join(work, "src"), img);
    const plain = await parse(img, true);
    const at = (name: string) => plain.files.find((f) => f.path === name)!;
    // Spans read by a run: bin/big2's middle first, then bin/big's start.
    const big = at("bin/big");
    const big2 = at("bin/big2");
    assert.ok(big.start < big2.start, "by default in name order");
    const set = startupFiles(plain.files, [
      [big2.start + 1000, big2.start + 2000],
      [big.start, big.start + 10],
    ]);
    assert.deepEqual(set, ["bin/big2", "bin/big"]);
    const sortFile = path.join(work, "sort");
    await writeFile(sortFile, sortFileText(path.join(work, "src"), [...set, "has space"]));
    assert.doesNotMatch(await readFile(sortFile, "utf8"), /has space/);
    const sortedImg = path.join(work, "sorted.sqfs");
    await buildSquashfs(path.join(work, "src"), sortedImg, {
      compressor: "zstd",
      level: 3,
      extraArgs: ["-sort", sortFile],
    });
    const sorted = (await parse(sortedImg, true)).files.filter((f) => f.end > f.start);
    sorted.sort((a, b) => a.start - b.start);
    assert.deepEqual(
      sorted.slice(0, 2).map((f) => f.path),
      ["bin/big2", "bin/big"],
    );
  });
});
