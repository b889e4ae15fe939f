/**
 * Measures how many bytes two related images share under fixed-size and content-defined (FastCDC)
 * chunking at several chunk sizes: what a worker that holds image A need not fetch for image B.
 *   node dist/bench/chunking.js [a.tar] [b.tar] [--compressions zstd:3,lz4,...] [--default-chunking]
 * (default: the Debian minbase and minbase-plus fixtures; zstd 3, zstd 3 -no-fragments and
 * uncompressed SquashFS; every chunking). --compressions: block images built with those
 * (KINDLING_BLOCK_COMPRESSION's words) instead; --default-chunking: only the product's chunking
 * (FastCDC 128 KiB). Prints Markdown tables.
 */
import { mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import path from "node:path";
import { benchArgs } from "../src/bench/args.js";
import {
  buildSquashfs,
  DEFAULT_SQUASHFS,
  type SquashfsOptions,
  squashfsOptions,
} from "../src/blockimage/squashfs.js";
import { materializeLayers } from "../src/image/build.js";
import { type ChunkingSpec, chunkFile, DEFAULT_CHUNKING, fastcdcSpec } from "../src/store/chunker.js";

const args = benchArgs(
  "node dist/bench/chunking.js [a.tar] [b.tar] [--compressions zstd:3,lz4] [--default-chunking]",
  { options: ["compressions"], switches: ["default-chunking"], positionals: true },
);
const [aTar, bTar] = [
  args.positionals[0] ?? ".cache/fixtures/debian-minbase.tar",
  args.positionals[1] ?? ".cache/fixtures/debian-minbase-plus.tar",
];
const KiB = 1024;
const specs: ChunkingSpec[] = args.has("default-chunking")
  ? [DEFAULT_CHUNKING]
  : [
      ...[64, 128, 256, 512, 1024, 4096].map((k) => ({ algorithm: "fixed" as const, avgSize: k * KiB })),
      ...[64, 128, 256, 512, 1024].map((k) => fastcdcSpec(k * KiB)),
    ];
const compressions = args.list("compressions");
const variants: { label: string; opts: SquashfsOptions }[] = compressions
  ? compressions.map((c) => ({ label: c, opts: squashfsOptions(c) }))
  : [
      { label: "zstd 3 (default)", opts: DEFAULT_SQUASHFS },
      { label: "zstd 3, -no-fragments", opts: { ...DEFAULT_SQUASHFS, extraArgs: ["-no-fragments"] } },
      { label: "uncompressed", opts: { compressor: "none" } },
    ];

const work = await mkdtemp("/var/tmp/kindling-bench-");
try {
  const trees: string[] = [];
  for (const [i, t] of [aTar, bTar].entries()) {
    const dir = path.join(work, `t${i}`);
    await mkdir(dir);
    trees.push(await materializeLayers(dir, [{ path: t }], false));
  }
  console.log(`# node dist/bench/chunking.js ${process.argv.slice(2).join(" ")}`);
  console.log(`A = ${aTar}, B = ${bTar}; ${new Date().toISOString()}`);
  for (const v of variants) {
    const imgs = [path.join(work, "a.sqfs"), path.join(work, "b.sqfs")];
    const t0 = process.hrtime.bigint();
    for (const [i, tree] of trees.entries()) await buildSquashfs(tree, imgs[i]!, v.opts);
    const buildSecs = Number(process.hrtime.bigint() - t0) / 1e9;
    const sizes = await Promise.all(imgs.map(async (p) => (await stat(p)).size));
    console.log(
      `\nSquashFS ${v.label}: A ${(sizes[0]! / 1e6).toFixed(1)} MB, B ${(sizes[1]! / 1e6).toFixed(1)} MB (mksquashfs of both: ${buildSecs.toFixed(1)} s)\n`,
    );
    console.log(
      "| chunking | avg size | chunks of B | B's bytes already in A | share of B | chunk time B (s) |",
    );
    console.log("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (const spec of specs) {
      const a = await chunkFile(imgs[0]!, spec);
      const t0 = process.hrtime.bigint();
      const b = await chunkFile(imgs[1]!, spec);
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      const inA = new Set(a.map((c) => c.digest));
      const shared = b.filter((c) => inA.has(c.digest)).reduce((s, c) => s + c.length, 0);
      console.log(
        `| ${spec.algorithm} | ${spec.avgSize / KiB} KiB | ${b.length} | ${(shared / 1e6).toFixed(1)} MB | ${((100 * shared) / sizes[1]!).toFixed(1)}% | ${secs.toFixed(2)} |`,
      );
    }
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
