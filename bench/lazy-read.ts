/**
 * Lazy file read benchmark (not a test): sequential throughput and random 4 KiB latency through
 * the lazy FUSE file, with every chunk already in the local cache, against the same bytes in a
 * plain file; interleaved rounds, median ratios.
 *   node dist/bench/lazy-read.js [--mib 128] [--rounds 5] [--ops 4000]
 * Three ways to read the lazy file:
 *   page cache  plain open(): after the first read the kernel serves it (kernel_cache)
 *   daemon      O_DIRECT open(): every read goes to the daemon (what a loop device with
 *               --direct-io=on does), from its memory LRU
 *   direct_io   a mount with FUSE direct_io: every read goes to the daemon even without O_DIRECT
 */
import { randomBytes } from "node:crypto";
import { closeSync, constants, openSync, readSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { benchArgs } from "../src/bench/args.js";
import { type LazyImage, openLazyImage } from "../src/lazy/index.js";
import { KindlingHome } from "../src/util/home.js";
import { indexBytes } from "../test/helpers/blockindex.js";

const args = benchArgs("node dist/bench/lazy-read.js [--mib 128] [--rounds 5] [--ops 4000]", {
  options: ["mib", "rounds", "ops"],
});
const MIB = args.num("mib", 128);
const ROUNDS = args.num("rounds", 5);
const OPS = args.num("ops", 4000);
const SIZE = MIB << 20;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** O_DIRECT reads need an aligned buffer; JS cannot see addresses, so probe for an aligned offset. */
function alignedBuffer(fd: number, len: number): Buffer {
  const raw = Buffer.alloc(len + 8192);
  for (let off = 0; off <= 4096; off += 16) {
    const b = raw.subarray(off, off + len);
    try {
      readSync(fd, b, 0, 4096, 0);
      return b;
    } catch {
      // EINVAL: not aligned
    }
  }
  return raw.subarray(0, len);
}

function openFor(file: string, direct: boolean): { fd: number; buf: Buffer } {
  const fd = openSync(file, constants.O_RDONLY | (direct ? constants.O_DIRECT : 0));
  return { fd, buf: direct ? alignedBuffer(fd, 1 << 20) : Buffer.alloc(1 << 20) };
}

/** MB/s reading the whole file in `block`-byte reads. */
function sequential(file: string, direct: boolean, block: number): number {
  const { fd, buf } = openFor(file, direct);
  const t0 = process.hrtime.bigint();
  let total = 0;
  for (let pos = 0; pos < SIZE; pos += block) total += readSync(fd, buf, 0, block, pos);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  closeSync(fd);
  if (total !== SIZE) throw new Error(`read ${total} of ${SIZE} bytes from ${file}`);
  return total / 1e6 / s;
}

/** Median microseconds of a 4 KiB read at a random 4 KiB-aligned offset. */
function random4k(file: string, direct: boolean, offsets: number[]): number {
  const { fd, buf } = openFor(file, direct);
  const lat: number[] = [];
  for (const pos of offsets) {
    const t0 = process.hrtime.bigint();
    readSync(fd, buf, 0, 4096, pos);
    lat.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  closeSync(fd);
  return median(lat);
}

// A closed stdout (| head) must not kill us before the finally block releases mounts and loops.
process.stdout.on("error", () => {});

async function main(): Promise<void> {
  const tmp = await mkdtemp("/tmp/kindling-bench-lazy-");
  const home = new KindlingHome(path.join(tmp, "home")).ensure();
  const data = randomBytes(SIZE);
  const plain = path.join(tmp, "plain.bin");
  await writeFile(plain, data);
  const { record } = await indexBytes(home, data, 512 << 10);
  const opened: LazyImage[] = [];
  try {
    const lazy = await openLazyImage(home, record, "auto", { memoryCacheBytes: SIZE + (1 << 20) });
    opened.push(lazy);
    process.env.KINDLING_LAZY_DIRECT_IO = "1";
    const dio = await openLazyImage(home, record, "auto", { memoryCacheBytes: SIZE + (1 << 20) });
    delete process.env.KINDLING_LAZY_DIRECT_IO;
    opened.push(dio);
    // Warm everything: plain and lazy page caches, the daemons' chunk memory.
    for (const f of [plain, lazy.path, dio.path]) sequential(f, false, 1 << 20);
    sequential(lazy.path, true, 1 << 20);

    type Row = { name: string; lazy: number[]; plain: number[]; unit: string; higherIsBetter: boolean };
    const rows: Row[] = [
      { name: "seq 1 MiB reads, page cache", lazy: [], plain: [], unit: "MB/s", higherIsBetter: true },
      {
        name: "seq 128 KiB reads, daemon (O_DIRECT)",
        lazy: [],
        plain: [],
        unit: "MB/s",
        higherIsBetter: true,
      },
      { name: "seq 1 MiB reads, direct_io mount", lazy: [], plain: [], unit: "MB/s", higherIsBetter: true },
      { name: "random 4 KiB, page cache", lazy: [], plain: [], unit: "us", higherIsBetter: false },
      { name: "random 4 KiB, daemon (O_DIRECT)", lazy: [], plain: [], unit: "us", higherIsBetter: false },
      { name: "random 4 KiB, direct_io mount", lazy: [], plain: [], unit: "us", higherIsBetter: false },
    ];
    const ratios: number[][] = rows.map(() => []);
    for (let r = 0; r < ROUNDS; r++) {
      const offsets = Array.from({ length: OPS }, () => Math.floor(Math.random() * (SIZE / 4096)) * 4096);
      const pairs: [() => number, () => number][] = [
        [() => sequential(lazy.path, false, 1 << 20), () => sequential(plain, false, 1 << 20)],
        [() => sequential(lazy.path, true, 128 << 10), () => sequential(plain, false, 128 << 10)],
        [() => sequential(dio.path, false, 1 << 20), () => sequential(plain, false, 1 << 20)],
        [() => random4k(lazy.path, false, offsets), () => random4k(plain, false, offsets)],
        [() => random4k(lazy.path, true, offsets), () => random4k(plain, false, offsets)],
        [() => random4k(dio.path, false, offsets), () => random4k(plain, false, offsets)],
      ];
      pairs.forEach(([l, p], i) => {
        // Alternate which goes first so neither always gets the warmer CPU.
        const [lv, pv] =
          r % 2
            ? [l(), p()]
            : (() => {
                const pv = p();
                return [l(), pv];
              })();
        rows[i].lazy.push(lv);
        rows[i].plain.push(pv);
        ratios[i].push(rows[i].higherIsBetter ? pv / lv : lv / pv);
      });
    }
    console.log(`$ node dist/bench/lazy-read.js --mib ${MIB} --rounds ${ROUNDS} --ops ${OPS}`);
    console.log(
      `${MIB} MiB random bytes, 512 KiB chunks, all chunks local; median of ${ROUNDS} interleaved rounds`,
    );
    console.log("| read | lazy | plain | lazy slowdown (x) |");
    console.log("|---|---|---|---|");
    rows.forEach((row, i) => {
      const f = (x: number) => `${x.toFixed(row.unit === "us" ? 1 : 0)} ${row.unit}`;
      console.log(
        `| ${row.name} | ${f(median(row.lazy))} | ${f(median(row.plain))} | ${median(ratios[i]).toFixed(2)} |`,
      );
    });
    console.log("(slowdown = lazy time / plain time: 1.00 is as fast as the plain file; target <= 1.5)");
  } finally {
    for (const l of opened) await l.close();
    await rm(tmp, { recursive: true, force: true });
  }
}

await main();
