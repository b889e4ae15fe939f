import assert from "node:assert/strict";
import { lstat, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { LayerApplier } from "../src/image/apply.js";
import { openLayer } from "../src/image/compression.js";
import { exec } from "../src/util/exec.js";

/** Writes a layer tar whose entries come in exactly this order (GNU tar, no recursion). */
async function layer(work: string, name: string, entries: [string, string | null][]): Promise<string> {
  const dir = path.join(work, `${name}.d`);
  await mkdir(dir);
  for (const [p, content] of entries) {
    if (content === null) await mkdir(path.join(dir, p), { recursive: true });
    else {
      await mkdir(path.dirname(path.join(dir, p)), { recursive: true });
      await writeFile(path.join(dir, p), content);
    }
  }
  const list = path.join(work, `${name}.list`);
  await writeFile(list, `${entries.map(([p]) => p).join("\n")}\n`);
  const tar = path.join(work, `${name}.tar`);
  await exec("tar", ["-C", dir, "--numeric-owner", "--no-recursion", "-T", list, "-cf", tar]);
  return tar;
}

describe("layer rules", () => {
  let work: string;
  before(async () => {
    work = await mkdtemp("/tmp/kindling-test-layers-");
  });
  after(async () => {
    await rm(work, { recursive: true, force: true });
  });

  test("a whiteout hides lower layers only, even when it follows this layer's own entry", async () => {
    const root = path.join(work, "root");
    await mkdir(root);
    const l1 = await layer(work, "l1", [
      ["d", null],
      ["d/lower", "lower\n"],
      ["f", "lower f\n"],
    ]);
    const l2 = await layer(work, "l2", [
      ["d", null],
      ["d/upper", "upper\n"],
      ["f", "upper f\n"],
      [".wh.d", ""],
      [".wh.f", ""],
      [".wh.gone-anyway", ""],
    ]);
    const applier = new LayerApplier(root);
    for (const l of [l1, l2]) await applier.apply((await openLayer({ path: l })).stream);
    await applier.finish();
    assert.equal(await readFile(path.join(root, "d/upper"), "utf8"), "upper\n");
    await assert.rejects(lstat(path.join(root, "d/lower")));
    assert.equal(await readFile(path.join(root, "f"), "utf8"), "upper f\n");
    await assert.rejects(lstat(path.join(root, ".wh.d")));
  });

  test("gzip, zstd and xz layers are detected by their magic bytes", async () => {
    const root = path.join(work, "root2");
    await mkdir(root);
    const plain = await layer(work, "z", [["hello", "hi\n"]]);
    await exec("gzip", ["-k", plain]);
    await exec("zstd", ["-q", "-k", plain]);
    await exec("xz", ["-k", plain]);
    for (const [f, kind] of [
      [`${plain}.gz`, "gzip"],
      [`${plain}.zst`, "zstd"],
      [`${plain}.xz`, "xz"],
      [plain, "none"],
    ] as const) {
      const opened = await openLayer({ path: f });
      assert.equal(opened.compression, kind);
      await new LayerApplier(root).apply(opened.stream);
      await opened.finished();
      assert.equal(await readFile(path.join(root, "hello"), "utf8"), "hi\n");
      await rm(path.join(root, "hello"));
    }
  });

  test("GNU long names and link targets, and a bad header checksum", async () => {
    const src = path.join(work, "gnu");
    const long = `${"d".repeat(120)}/${"f".repeat(150)}`;
    await mkdir(path.join(src, "d".repeat(120)), { recursive: true });
    await writeFile(path.join(src, long), "long\n");
    await exec("ln", ["-s", long, path.join(src, "l".repeat(130))]);
    const tar = path.join(work, "gnu.tar");
    await exec("tar", ["-C", src, "--format=gnu", "-cf", tar, "."]);
    const root = path.join(work, "root5");
    await mkdir(root);
    const applier = new LayerApplier(root);
    await applier.apply((await openLayer({ path: tar })).stream);
    await applier.finish();
    assert.equal(await readFile(path.join(root, long), "utf8"), "long\n");
    assert.equal(await readFile(path.join(root, "l".repeat(130)), "utf8"), "long\n");

    const bad = await readFile(tar);
    bad[0] ^= 0xff; // the first header's name: its checksum no longer matches
    await writeFile(path.join(work, "bad.tar"), bad);
    const root6 = path.join(work, "root6");
    await mkdir(root6);
    await assert.rejects(
      new LayerApplier(root6).apply((await openLayer({ path: path.join(work, "bad.tar") })).stream),
      // the first header: nothing read yet, so it is "not a tar", described by its bytes in hex
      /not a tar archive \(no valid tar header; the data starts with bytes [0-9a-f ]+\)/,
    );
  });

  test("overlayfs xattrs in a layer are dropped; others are kept", async () => {
    const src = path.join(work, "ovl");
    await mkdir(src);
    await writeFile(path.join(src, "f"), "x");
    await exec("setfattr", ["-n", "trusted.overlay.redirect", "-v", "/etc", path.join(src, "f")]);
    await exec("setfattr", ["-n", "user.keep", "-v", "1", path.join(src, "f")]);
    const tar = path.join(work, "ovl.tar");
    await exec("tar", ["-C", src, "--xattrs", "--xattrs-include=*", "-cf", tar, "f"]);
    const root = path.join(work, "root4");
    await mkdir(root);
    const applier = new LayerApplier(root);
    await applier.apply((await openLayer({ path: tar })).stream);
    await applier.finish();
    const dump = (await exec("getfattr", ["-d", "-m", "-", "--absolute-names", path.join(root, "f")])).stdout;
    assert.match(dump, /user\.keep="1"/);
    assert.doesNotMatch(dump, /overlay/);
  });

  test("a corrupt zstd layer fails with the decompressor's error", async () => {
    const bad = path.join(work, "bad.zst");
    await writeFile(bad, Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(100, 7)]));
    const root = path.join(work, "root3");
    await mkdir(root);
    const opened = await openLayer({ path: bad });
    await assert.rejects(
      (async () => {
        await new LayerApplier(root).apply(opened.stream);
        await opened.finished();
      })(),
      /zstd|truncated|checksum/,
    );
  });
});
