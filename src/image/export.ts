import { open, rm, stat } from "node:fs/promises";
import path from "node:path";
import { policyFrom } from "../chunks/policy.js";
import { chunkReaderFor } from "../chunks/sources.js";
import { readBlockIndex } from "../store/blockindex.js";
import { loadImage } from "../store/catalog.js";
import { exec } from "../util/exec.js";
import type { KindlingHome } from "../util/home.js";
import { progress } from "../util/progress.js";
import { resolveOutput, tarTo } from "./output.js";
import { makeTempDir, makeTreeDir } from "./workdir.js";

const FETCH_CONCURRENCY = 8;

/** Reassembles an image's block image from its chunks (each verified) into `out`. */
export async function writeBlockImage(
  home: KindlingHome,
  name: string,
  out: string,
  show = true,
): Promise<void> {
  const record = await loadImage(home, name);
  const chunks = chunkReaderFor(home, record.origin, policyFrom());
  const index = await readBlockIndex(home, record.digest);
  const bar = show ? progress(`assembling ${name}`, index.blockSize) : { update() {}, done() {} };
  const fh = await open(out, "w");
  let done = 0;
  let next = 0;
  // A few fetches at once: a registry source is latency-bound, one chunk at a time would crawl.
  const worker = async () => {
    while (next < index.chunks.length) {
      const c = index.chunks[next++]!;
      const bytes = await chunks.read(c);
      await fh.write(bytes, 0, bytes.length, c.offset);
      done += c.length;
      bar.update(done);
    }
  };
  try {
    await Promise.all(Array.from({ length: FETCH_CONCURRENCY }, worker));
  } finally {
    await fh.close();
  }
  bar.done();
}

/**
 * `image export`: the image's flattened filesystem as a tar (owners numeric, modes, links, device
 * nodes, xattrs, mtimes kept). The block image is unpacked with unsquashfs, then tarred by GNU tar
 * to `outFile` as `tar -f` would write it (src/image/output.ts: "-", devices, FIFOs, symlinks).
 */
export async function exportImage(
  home: KindlingHome,
  name: string,
  outFile: string,
  show = true,
): Promise<void> {
  home.ensure();
  // Decided before the slow part: `-o DIR` or a missing directory fails at once.
  const target = await resolveOutput(outFile);
  const work = await makeTempDir(home.tmp, "export");
  let scopeTree: string | undefined;
  try {
    const img = path.join(work, "image.squashfs");
    await writeBlockImage(home, name, img, show);
    // Unpacked on tmpfs when it fits (many small files are slow on this disk), else beside the store.
    const tree = await makeTreeDir(home.tmp, (await stat(img)).size * 4);
    scopeTree = tree.dir;
    const root = path.join(tree.dir, "root");
    await exec("unsquashfs", ["-no-progress", "-quiet", "-d", root, img]);
    await rm(img, { force: true });
    await tarTo(target, [
      "-C",
      root,
      "--numeric-owner",
      "--xattrs",
      "--xattrs-include=*",
      "--sort=name",
      ".",
    ]);
  } finally {
    if (scopeTree) await rm(scopeTree, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  }
}
