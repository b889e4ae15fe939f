import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { buildSquashfs, squashfsOptions } from "../src/blockimage/squashfs.js";
import { materializeLayers } from "../src/image/build.js";
import { importImage } from "../src/image/import.js";
import { readBlockIndex } from "../src/store/blockindex.js";
import type { Digest } from "../src/store/types.js";
import { exec } from "../src/util/exec.js";
import { fixture, tempHome } from "./helpers/fixtures.js";

describe("block image", () => {
  let work: string;
  before(async () => {
    work = await mkdtemp("/tmp/kindling-test-block-");
  });
  after(async () => {
    await rm(work, { recursive: true, force: true });
  });

  // SquashFS superblock: compression id at byte 20 (1 gzip, 3 lzo, 4 xz, 5 lz4, 6 zstd).
  const COMPRESSION_ID: Record<string, number> = { zstd: 6, lz4: 5, gzip: 1, xz: 4, lzo: 3, none: 1 };
  for (const spec of ["zstd:3", "lz4", "lz4:hc", "gzip:6", "none"]) {
    test(`the same layers give a byte-identical SquashFS, readable by the kernel (${spec})`, async () => {
      const layers = [{ path: path.join(await fixture("busybox-rootfs.tar")) }];
      const imgs: Buffer[] = [];
      const base = path.join(work, spec.replace(":", "-"));
      for (const i of [0, 1]) {
        const dir = path.join(base, `t${i}`);
        await mkdir(dir, { recursive: true });
        const root = await materializeLayers(dir, layers, false);
        // Touch the tree's atimes/ctimes: they must not matter.
        await writeFile(path.join(dir, "unrelated"), "x");
        await buildSquashfs(root, path.join(dir, "img"), squashfsOptions(spec));
        imgs.push(await readFile(path.join(dir, "img")));
      }
      assert.ok(imgs[0]!.equals(imgs[1]!), "byte-identical");
      // "none" stores everything uncompressed (mksquashfs still records gzip as the compressor).
      assert.equal(imgs[0]!.readUInt16LE(20), COMPRESSION_ID[spec.split(":")[0]!]);
      const mnt = path.join(base, "mnt");
      await mkdir(mnt);
      await exec("mount", ["-t", "squashfs", "-o", "loop,ro", path.join(base, "t0", "img"), mnt]);
      try {
        assert.equal(await readFile(path.join(mnt, "etc/hostname"), "utf8"), "kindling-busybox\n");
        const ls = (await exec("ls", ["-ln", path.join(mnt, "bin/sh")])).stdout;
        assert.match(ls, /^lrwxrwxrwx 1 0 0 .* -> busybox/);
      } finally {
        await exec("umount", [mnt], { allowFailure: true });
      }
    });
  }

  test("Debian minbase imported into two fresh homes: same digest and block image", async () => {
    const tar = await fixture("debian-minbase.tar");
    const homes = [await tempHome(), await tempHome()];
    try {
      const recs: { digest: Digest }[] = [];
      for (const h of homes) recs.push(await importImage(h, tar, { name: "minbase", progress: false }));
      assert.equal(recs[0]!.digest, recs[1]!.digest);
      const [a, b] = await Promise.all(homes.map((h, i) => readBlockIndex(h, recs[i]!.digest)));
      assert.equal(a!.blockDigest, b!.blockDigest);
      assert.equal(a!.chunking.algorithm, "fastcdc");
      assert.ok(a!.chunks.length > 50);
    } finally {
      for (const h of homes) await h.remove();
    }
  });
});

describe("build tree placement", () => {
  test("a layer that expands past the tmpfs budget is rebuilt on disk", async () => {
    const home = await tempHome();
    const work = await mkdtemp("/tmp/kindling-test-bomb-");
    const saved = process.env.KINDLING_BUILD_TMPFS_MAX;
    try {
      await mkdir(path.join(work, "t"));
      await writeFile(path.join(work, "t", "zeros"), Buffer.alloc(8 << 20));
      await exec("tar", ["-C", path.join(work, "t"), "-czf", path.join(work, "bomb.tar.gz"), "."]);
      process.env.KINDLING_BUILD_TMPFS_MAX = String(1 << 20); // 8 MiB of zeros gzip to ~8 KiB
      const rec = await importImage(home, path.join(work, "bomb.tar.gz"), { name: "bomb", progress: false });
      assert.ok(rec.blockSize > 0);
      delete process.env.KINDLING_BUILD_TMPFS_MAX;
      const again = await importImage(home, path.join(work, "bomb.tar.gz"), {
        name: "bomb2",
        progress: false,
      });
      assert.equal(again.digest, rec.digest, "tmpfs or disk, the same image");
    } finally {
      if (saved === undefined) delete process.env.KINDLING_BUILD_TMPFS_MAX;
      else process.env.KINDLING_BUILD_TMPFS_MAX = saved;
      await home.remove();
      await rm(work, { recursive: true, force: true });
    }
  });
});

describe("the build tree's filesystem does not change the image", () => {
  for (const [label, xattrs] of [
    [
      "one xattr per file (built on tmpfs)",
      ["security.capability=0x0000000200040000000000000000000000000000"],
    ],
    ["two xattrs on a file (tmpfs falls back to disk)", ["user.b=0x31", "user.a=0x32"]],
  ] as const) {
    test(label, async () => {
      const home = await tempHome();
      const work = await mkdtemp("/tmp/kindling-test-xattr-");
      const saved = process.env.KINDLING_BUILD_TMPFS;
      try {
        await mkdir(path.join(work, "t"));
        await writeFile(path.join(work, "t", "f"), "x");
        for (const x of xattrs) {
          const [n, v] = x.split("=");
          await exec("setfattr", ["-n", n!, "-v", v!, path.join(work, "t", "f")]);
        }
        const tar = path.join(work, "x.tar");
        await exec("tar", ["-C", path.join(work, "t"), "--xattrs", "--xattrs-include=*", "-cf", tar, "."]);
        const digests: string[] = [];
        for (const tmpfs of ["1", "0"]) {
          process.env.KINDLING_BUILD_TMPFS = tmpfs;
          digests.push((await importImage(home, tar, { name: `x${tmpfs}`, progress: false })).digest);
        }
        assert.equal(digests[0], digests[1]);
      } finally {
        if (saved === undefined) delete process.env.KINDLING_BUILD_TMPFS;
        else process.env.KINDLING_BUILD_TMPFS = saved;
        await home.remove();
        await rm(work, { recursive: true, force: true });
      }
    });
  }
});
