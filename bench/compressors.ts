/**
 * Measures mksquashfs compressors and levels on one image tree: build time and image size.
 *   node dist/bench/compressors.js [rootfs.tar]    (default .cache/fixtures/debian-minbase.tar)
 * Prints a Markdown table (docs/image-pipeline.md has the numbers for this machine).
 */
import { mkdtemp, rm, stat } from "node:fs/promises";
import path from "node:path";
import { mksquashfsArgs, type SquashfsOptions } from "../src/blockimage/squashfs.js";
import { materializeLayers } from "../src/image/build.js";
import { exec } from "../src/util/exec.js";

const tarPath = process.argv[2] ?? ".cache/fixtures/debian-minbase.tar";
const configs: SquashfsOptions[] = [
  { compressor: "none" },
  { compressor: "lz4" },
  { compressor: "lz4", hc: true },
  { compressor: "lzo" },
  { compressor: "gzip", level: 6 },
  { compressor: "gzip", level: 9 },
  { compressor: "zstd", level: 1 },
  { compressor: "zstd", level: 3 },
  { compressor: "zstd", level: 9 },
  { compressor: "zstd", level: 15 },
  { compressor: "xz" },
];

const work = await mkdtemp("/var/tmp/kindling-bench-");
try {
  const root = await materializeLayers(work, [{ path: tarPath }], false);
  const du = await exec("du", ["-sb", root]);
  const treeBytes = Number(du.stdout.split("\t")[0]);
  // Warm the page cache so the first row is not charged for reading the tree.
  await exec("tar", ["-C", root, "-cf", "/dev/null", "."]);
  console.log(`tree: ${tarPath}, ${(treeBytes / 1e6).toFixed(1)} MB; ${new Date().toISOString()}`);
  console.log("| compressor | mksquashfs flags | build (s) | image (MB) | ratio | unpack (s) |");
  console.log("| --- | --- | ---: | ---: | ---: | ---: |");
  for (const c of configs) {
    const out = path.join(work, "img.sqfs");
    const args = mksquashfsArgs(root, out, c);
    const t0 = process.hrtime.bigint();
    await exec("mksquashfs", args);
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const size = (await stat(out)).size;
    // Unpacking to tmpfs: what reading every file costs (decompression), the price a lazy reader pays.
    const unpacked = await mkdtemp("/dev/shm/kindling-bench-");
    const t1 = process.hrtime.bigint();
    await exec("unsquashfs", ["-no-progress", "-quiet", "-d", path.join(unpacked, "t"), out]);
    const readSecs = Number(process.hrtime.bigint() - t1) / 1e9;
    await rm(unpacked, { recursive: true, force: true });
    const flags = args.slice(args.indexOf("-b") + 2).join(" ");
    const label = c.hc ? "lz4 (hc)" : `${c.compressor}${c.level ? ` ${c.level}` : ""}`;
    console.log(
      `| ${label} | \`${flags}\` | ${secs.toFixed(2)} | ${(size / 1e6).toFixed(1)} | ${(treeBytes / size).toFixed(2)} | ${readSecs.toFixed(2)} |`,
    );
    await rm(out, { force: true });
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
