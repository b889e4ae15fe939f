/**
 * SquashFS-over-loop benchmark (not a test): reading every file of a SquashFS mounted from the
 * lazy file (loop, read-only, direct I/O: how runc/gVisor use it) against the same image file on
 * a plain loop device; every chunk already local. Each round mounts afresh, so "cold" means the
 * SquashFS cache is empty (every block goes down to the daemon) and "warm" is a second pass.
 *   node dist/bench/lazy-squashfs.js [--files 2000] [--rounds 5]
 */
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { benchArgs } from "../src/bench/args.js";
import { type LazyImage, openLazyImage } from "../src/lazy/index.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { indexBytes } from "../test/helpers/blockindex.js";
import { makeSquashfs } from "../test/helpers/images.js";

const args = benchArgs("node dist/bench/lazy-squashfs.js [--files 2000] [--rounds 5]", {
  options: ["files", "rounds"],
});
const FILES = args.num("files", 2000);
const ROUNDS = args.num("rounds", 5);

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Files of 1-64 KiB, half random, half text: something like a root filesystem's mix. */
async function makeTree(dir: string): Promise<void> {
  for (let i = 0; i < FILES; i++) {
    const sub = path.join(dir, `d${i % 40}`);
    await mkdir(sub, { recursive: true });
    const size = 1024 + Math.floor(Math.random() * 63 * 1024);
    const body =
      i % 2
        ? randomBytes(size)
        : Buffer.from(`line ${i} of a text file\n`.repeat(size / 24 + 1)).subarray(0, size);
    await writeFile(path.join(sub, `f${i}`), body);
  }
}

/** Milliseconds to read every file under dir. */
async function readAll(dir: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) await readFile(path.join(e.parentPath, e.name));
  }
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

// A closed stdout (| head) must not kill us before the finally block releases mounts and loops.
process.stdout.on("error", () => {});

async function main(): Promise<void> {
  const tmp = await mkdtemp("/tmp/kindling-bench-sqfs-");
  const home = new KindlingHome(path.join(tmp, "home")).ensure();
  const loops: string[] = [];
  const mounts: string[] = [];
  let lazy: LazyImage | undefined;
  let released: Promise<void> | undefined;
  const release = () =>
    (released ??= (async () => {
      for (const m of mounts) await exec("umount", ["-l", m], { allowFailure: true });
      for (const l of loops) await exec("losetup", ["-d", l], { allowFailure: true });
      await lazy?.close();
      await rm(tmp, { recursive: true, force: true });
    })());
  // Ctrl-C: release the mounts and loop devices before going.
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.once(sig, () => void release().finally(() => process.exit(130)));
  }
  try {
    await makeTree(path.join(tmp, "src"));
    const img = path.join(tmp, "image.sqfs");
    await makeSquashfs(path.join(tmp, "src"), img);
    const data = await readFile(img);
    const { record } = await indexBytes(home, data, 256 << 10);
    lazy = await openLazyImage(home, record, "auto", { memoryCacheBytes: data.length + (1 << 20) });
    const attach = async (file: string, direct: boolean) => {
      const dev = (
        await exec("losetup", ["-r", `--direct-io=${direct ? "on" : "off"}`, "--show", "-f", file])
      ).stdout.trim();
      loops.push(dev);
      return dev;
    };
    const lazyLoop = await attach(lazy.path, true);
    const plainLoop = await attach(img, false);
    const mnt = { lazy: path.join(tmp, "m-lazy"), plain: path.join(tmp, "m-plain") };
    await mkdir(mnt.lazy);
    await mkdir(mnt.plain);
    const pass = async (dev: string, dir: string) => {
      await exec("mount", ["-t", "squashfs", "-o", "ro", dev, dir]);
      mounts.push(dir);
      try {
        return { cold: await readAll(dir), warm: await readAll(dir) };
      } finally {
        await exec("umount", [dir]);
        mounts.pop();
      }
    };
    // Warm-up: the daemon's memory, the host page cache of the plain image.
    await pass(lazyLoop, mnt.lazy);
    await pass(plainLoop, mnt.plain);
    const res = {
      lazyCold: [] as number[],
      plainCold: [] as number[],
      lazyWarm: [] as number[],
      plainWarm: [] as number[],
    };
    const ratio = { cold: [] as number[], warm: [] as number[] };
    for (let r = 0; r < ROUNDS; r++) {
      const order = r % 2 ? ["lazy", "plain"] : ["plain", "lazy"];
      const got: Record<string, { cold: number; warm: number }> = {};
      for (const which of order) {
        got[which] = which === "lazy" ? await pass(lazyLoop, mnt.lazy) : await pass(plainLoop, mnt.plain);
      }
      res.lazyCold.push(got.lazy.cold);
      res.plainCold.push(got.plain.cold);
      res.lazyWarm.push(got.lazy.warm);
      res.plainWarm.push(got.plain.warm);
      ratio.cold.push(got.lazy.cold / got.plain.cold);
      ratio.warm.push(got.lazy.warm / got.plain.warm);
    }
    const mib = (data.length / 2 ** 20).toFixed(1);
    console.log(`$ node dist/bench/lazy-squashfs.js --files ${FILES} --rounds ${ROUNDS}`);
    console.log(
      `${FILES} files in a ${mib} MiB zstd-3 SquashFS, 256 KiB chunks, all local; read every file; median of ${ROUNDS} rounds`,
    );
    console.log("| pass | lazy (loop, direct-io) | plain file (loop) | lazy slowdown (x) |");
    console.log("|---|---|---|---|");
    const ms = (x: number) => `${x.toFixed(0)} ms`;
    console.log(
      `| cold SquashFS cache | ${ms(median(res.lazyCold))} | ${ms(median(res.plainCold))} | ${median(ratio.cold).toFixed(2)} |`,
    );
    console.log(
      `| warm SquashFS cache | ${ms(median(res.lazyWarm))} | ${ms(median(res.plainWarm))} | ${median(ratio.warm).toFixed(2)} |`,
    );
    console.log(`daemon: ${JSON.stringify(await lazy.stats())}`);
  } finally {
    await release();
  }
}

await main();
