import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { withConfig } from "../src/config/index.js";
import { devNumbers } from "../src/host/loop.js";
import { readMountinfo } from "../src/host/mounts.js";
import { chunksIn } from "../src/lazy/chunkmap.js";
import { cleanupStale, mountImage, openLazyImage, umountImage } from "../src/lazy/index.js";
import { parseSquashfsSuperblock } from "../src/lazy/squashfs.js";
import type { ChunkSource, Digest } from "../src/store/types.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { indexBytes } from "./helpers/blockindex.js";

let home: KindlingHome;
let tmp: string;
let image: Buffer;
const big = randomBytes(3 << 20);

before(async () => {
  tmp = await mkdtemp("/tmp/kindling-lazy-sqfs-");
  home = new KindlingHome(path.join(tmp, "home")).ensure();
  // Many small files so the metadata tables span several chunks; one big incompressible file
  // so the data area (which prefetch must skip) spans many more.
  const src = path.join(tmp, "src");
  for (let d = 0; d < 20; d++) {
    await mkdir(path.join(src, `dir${d}`), { recursive: true });
    for (let f = 0; f < 100; f++)
      await writeFile(path.join(src, `dir${d}`, `file${f}.txt`), `hello ${d}/${f}\n`);
  }
  await writeFile(path.join(src, "big.bin"), big);
  await exec("mksquashfs", [src, path.join(tmp, "img.sqfs"), "-noappend", "-quiet", "-no-progress"]);
  image = await readFile(path.join(tmp, "img.sqfs"));
});

after(async () => {
  await cleanupStale(home);
  const left = (await readMountinfo()).filter((m) => m.mountPoint.startsWith(tmp));
  const loops = (await exec("losetup", ["-a"])).stdout.split("\n").filter((l) => l.includes(tmp));
  await rm(tmp, { recursive: true, force: true });
  assert.deepEqual(left, [], "nothing of ours stays mounted");
  assert.deepEqual(loops, [], "no loop device of ours stays attached");
});

async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    out.push(path.relative(dir, path.join(e.parentPath, e.name)));
  }
  return out.sort();
}

test("a SquashFS image through the lazy file, loop and mount shows its files; prefetch got the tables", async () => {
  const { index, record, chunks } = await indexBytes(home, image, 8 << 10, false);
  const fetched = new Set<string>();
  let fetches = 0;
  const source: ChunkSource = {
    description: "memory",
    async fetch(digest: Digest) {
      fetches++;
      fetched.add(digest);
      return chunks.get(digest)!;
    },
  };
  const lazy = await openLazyImage(home, record, source, { readaheadChunks: 0 });
  const mnt = path.join(tmp, "mnt");
  await mkdir(mnt, { recursive: true });
  let loop = "";
  try {
    for (let i = 0; i < 100 && (await lazy.stats()).prefetch.state !== "done"; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const s = await lazy.stats();
    assert.equal(s.prefetch.state, "done");
    const layout = parseSquashfsSuperblock(image)!;
    const tables = chunksIn(index, layout.tablesStart, layout.bytesUsed - layout.tablesStart);
    assert.ok(tables.length >= 2, `tables span ${tables.length} chunks`);
    for (const i of [0, ...tables]) assert.ok(fetched.has(index.chunks[i].digest), `chunk ${i} prefetched`);
    assert.ok(fetched.size < index.chunks.length / 2, "prefetch skipped the data area");

    loop = (await exec("losetup", ["-r", "--direct-io=on", "--show", "-f", lazy.path])).stdout.trim();
    await exec("mount", ["-t", "squashfs", "-o", "ro", loop, mnt]);
    const before = fetches;
    const names = await listTree(mnt);
    assert.equal(names.length, 20 + 20 * 100 + 1);
    assert.ok(names.includes("dir7/file42.txt"));
    assert.ok(fetches - before <= 2, `listing needed ${fetches - before} more fetches`);
    assert.equal(await readFile(path.join(mnt, "dir7", "file42.txt"), "utf8"), "hello 7/42\n");
    assert.ok((await readFile(path.join(mnt, "big.bin"))).equals(big));
  } finally {
    await exec("umount", [mnt], { allowFailure: true });
    if (loop) await exec("losetup", ["-d", loop], { allowFailure: true });
    await lazy.close();
  }
});

test("image mount / umount leave nothing mounted or attached, and a dead mount is cleaned up", async () => {
  const { record } = await indexBytes(home, image, 128 << 10);
  const dir = path.join(tmp, "view");
  const attached = async () =>
    (await exec("losetup", ["-a"])).stdout.split("\n").filter((l) => l.includes(home.root));
  const ours = async () => (await readMountinfo()).filter((m) => m.mountPoint.startsWith(tmp));

  await mountImage(home, record, dir);
  try {
    assert.equal((await readdir(dir)).length, 21);
    assert.equal(await readFile(path.join(dir, "dir3", "file9.txt"), "utf8"), "hello 3/9\n");
    await assert.rejects(mountImage(home, record, dir), /already/);
  } finally {
    await umountImage(home, dir);
  }
  assert.deepEqual(await ours(), []);
  assert.deepEqual(await attached(), []);
  await assert.rejects(umountImage(home, dir), /not an image mounted/);

  // Unmounted by hand, then mounted again: the first mount's loop device and daemon are released.
  await mountImage(home, record, dir);
  await exec("umount", [dir]);
  await mountImage(home, record, dir);
  assert.equal((await attached()).length, 1);
  await umountImage(home, dir);
  assert.deepEqual(await ours(), []);
  assert.deepEqual(await attached(), []);

  // The daemon dies: cleanupStale releases the mount, the loop device and the FUSE mount.
  await mountImage(home, record, dir);
  const recDir = path.join(home.mounts, "image-mounts");
  const rec = JSON.parse(await readFile(path.join(recDir, (await readdir(recDir))[0]), "utf8"));
  process.kill(rec.pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 200));
  const released = await cleanupStale(home);
  assert.ok(released.includes(dir), `released ${released.join(", ")}`);
  assert.deepEqual(await ours(), []);
  assert.deepEqual(await attached(), []);
  assert.deepEqual(await readdir(recDir), []);
});

/** The loop device's direct-I/O flag and the lazy file's FUSE readahead (KiB) of the home's one image mount. */
async function readPath(): Promise<{ dio: string; fuseReadaheadKb: number }> {
  const loops = (await exec("losetup", ["-a"])).stdout.split("\n").filter((l) => l.includes(home.root));
  assert.equal(loops.length, 1, loops.join("\n"));
  const loop = path.basename(loops[0].split(":")[0]);
  const dio = (await readFile(`/sys/block/${loop}/loop/dio`, "utf8")).trim();
  const fuse = (await readMountinfo()).filter(
    (m) => m.fsType.startsWith("fuse") && m.mountPoint.startsWith(home.root),
  );
  assert.equal(fuse.length, 1, JSON.stringify(fuse));
  const { major, minor } = devNumbers((await stat(fuse[0].mountPoint, { bigint: true })).dev);
  const ra = await readFile(`/sys/class/bdi/${major}:${minor}/read_ahead_kb`, "utf8");
  return { dio, fuseReadaheadKb: Number(ra) };
}

test("the image's SquashFS reads the lazy file through the page cache with kernel readahead (0: direct I/O)", async () => {
  const { record } = await indexBytes(home, image, 128 << 10);
  const dir = path.join(tmp, "view-ra");
  // With readahead: a sequential reader's SquashFS blocks are requested ahead of it, in parallel.
  await withConfig({ lazyKernelReadahead: 8 << 20 }, () => mountImage(home, record, dir));
  try {
    assert.deepEqual(await readPath(), { dio: "0", fuseReadaheadKb: 8192 });
    assert.ok((await readFile(path.join(dir, "big.bin"))).equals(big));
    assert.equal(await readFile(path.join(dir, "dir5", "file77.txt"), "utf8"), "hello 5/77\n");
  } finally {
    await umountImage(home, dir);
  }
  // 0 (the default): direct I/O, the FUSE file's readahead left as the kernel set it.
  await withConfig({ lazyKernelReadahead: 0 }, () => mountImage(home, record, dir));
  try {
    const p = await readPath();
    assert.equal(p.dio, "1");
    assert.ok(p.fuseReadaheadKb <= 128, `readahead ${p.fuseReadaheadKb} KiB`);
    assert.ok((await readFile(path.join(dir, "big.bin"))).equals(big));
  } finally {
    await umountImage(home, dir);
  }
});
