/**
 * Issue 13's large-image target: a sequential `cat` of the largest file of the 1 GB image on a
 * cold worker against the same read warm. The image (scripts/fixtures/debian-big.sh: minbase +
 * 16 files of 64 MiB of incompressible bytes) is imported and pushed to docker-registry on
 * 127.0.0.1 once; each round, for each variant (interleaved), a fresh KINDLING_HOME pulls it (the
 * index only) and runs
 *   kindling run --runtime runc --network none big -- sh -c 's=$(date +%s%N); cat FILE >/dev/null; ...'
 * three times:
 *   cold:    every chunk of FILE fetched during the read;
 *   warm:    the same home right after: chunks local, the image's shared daemon and SquashFS mount
 *            up, the page cache warm (the issue's "warm": page-cache speed, the daemon never asked);
 *   dropped: chunks local, page cache dropped: once the image's daemon has exited (idle; the
 *            bench's homes keep no warm daemons), the home's chunk files are evicted from the page
 *            cache (`dd iflag=nocache`, per file: no machine-wide drop_caches), so the read goes
 *            through a new daemon, FUSE mount, loop device and SquashFS, from disk.
 * The time is taken inside the container around `cat` alone, so only the read is compared.
 * Variants: `dio` (KINDLING_LAZY_KERNEL_READAHEAD=0, the default: the loop device reads the lazy
 * file with direct I/O, one daemon round trip per SquashFS block), `raK` (K KiB of kernel
 * readahead on the lazy file, read by the loop device through the page cache; e.g. ra4096).
 * --baseline DIR: each variant also as `VARIANT@baseline`, run with another build's CLI (a checkout
 * of main, built, at DIR: DIR/dist/src/cli/main.js), interleaved with this build's, so a change is
 * compared in one run (its own homes: the bench's shared registry and image).
 *   node dist/bench/cold-cat.js [--n 3] [--file /data/big/blob-07] [--variants dio,ra4096]
 *     [--ref HOST/REPO:TAG]   (the image pushed already, to a plain-HTTP registry: no import, no push)
 *     [--baseline DIR]
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { loadavg } from "node:os";
import path from "node:path";
import { benchArgs } from "../src/bench/args.js";
import { releaseHome } from "../src/bench/homes.js";
import { FIXTURES, REPO } from "../src/bench/images.js";
import { startBenchRegistry } from "../src/bench/registry.js";
import { liveDaemonPids } from "../src/lazy/index.js";
import { removeHomeNetwork } from "../src/network/conflist.js";
import { loadImage } from "../src/store/catalog.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";

const args = benchArgs(
  "node dist/bench/cold-cat.js [--n 3] [--file /data/big/blob-07] [--variants dio,ra4096] [--ref REF] [--baseline DIR]",
  { options: ["n", "file", "variants", "ref", "baseline"] },
);
const N = args.num("n", 3);
const FILE = args.str("file", "/data/big/blob-07");
const BASE_VARIANTS = args.list("variants") ?? ["dio", "ra4096"];
const BASELINE = args.get("baseline");
const BASELINE_CLI = BASELINE && path.resolve(BASELINE, "dist", "src", "cli", "main.js");
const VARIANTS = BASELINE_CLI ? BASE_VARIANTS.flatMap((v) => [v, `${v}@baseline`]) : BASE_VARIANTS;
/** `dio`: KINDLING_LAZY_KERNEL_READAHEAD=0 (the default); `raK`: K KiB of kernel readahead. */
function variantEnv(variant: string): Record<string, string> {
  const v = variant.replace(/@baseline$/, "");
  if (v === "dio") return { KINDLING_LAZY_KERNEL_READAHEAD: "0" };
  const kib = /^ra(\d+)$/.exec(v)?.[1];
  if (!kib) throw new Error(`unknown variant ${v} (dio, or raKIB such as ra4096)`);
  return { KINDLING_LAZY_KERNEL_READAHEAD: String(Number(kib) * 1024) };
}
const VARIANT_ENV = Object.fromEntries(VARIANTS.map((v) => [v, variantEnv(v)]));
/** Bench homes keep no warm daemon, so the image's daemon exits soon after a run (for `dropped`). */
const HOME_ENV = { KINDLING_SERVICE_WARM_IMAGES: "0", KINDLING_LAZY_IDLE_MS: "5000" };
const KINDLING = path.join(REPO, "dist", "src", "cli", "main.js");
const SCRIPT = `s=$(date +%s%N); cat ${FILE} >/dev/null; e=$(date +%s%N); stat -c %s ${FILE}; echo $(( (e - s) / 1000 ))`;

function kindling(
  home: string,
  args: string[],
  env: Record<string, string> = {},
  timeoutMs = 1_800_000,
  cli = KINDLING,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], {
      env: { ...process.env, ...env, KINDLING_HOME: home },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    child.on("error", reject);
    child.on("close", (code, sig) => {
      clearTimeout(timer);
      if (code === 0) resolve(Buffer.concat(out).toString());
      else
        reject(
          new Error(
            `kindling ${args.join(" ")}: ${sig ?? code}: ${Buffer.concat(err).toString().slice(-500)}`,
          ),
        );
    });
  });
}

/** One read: bytes and microseconds, as the container printed them. */
async function catOnce(
  home: string,
  ref: string,
  env: Record<string, string>,
  cli: string,
): Promise<{ bytes: number; us: number }> {
  const out = await kindling(
    home,
    ["run", "--runtime", "runc", "--network", "none", ref, "--", "sh", "-c", SCRIPT],
    env,
    undefined,
    cli,
  );
  const [bytes, us] = out.trim().split("\n").map(Number);
  if (!(bytes > 0 && us > 0)) throw new Error(`unexpected output ${JSON.stringify(out)}`);
  return { bytes, us };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Waits (bounded) until the image's daemons in `home` have exited (idle), so the next read starts a new one. */
async function daemonsGone(home: KindlingHome, name: string): Promise<void> {
  const digest = (await loadImage(home, name)).digest;
  const deadline = Date.now() + 60_000;
  while ((await liveDaemonPids(home, digest)).length > 0) {
    if (Date.now() > deadline) throw new Error(`the image's daemon in ${home.root} did not exit within 60 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Drops the home's chunk files from the page cache (posix_fadvise DONTNEED through dd, per file). */
async function evictChunks(home: KindlingHome): Promise<void> {
  await exec("sh", [
    "-c",
    'find "$1" -type f -print0 | xargs -0 -r -P 2 -I{} dd if={} iflag=nocache count=0 status=none',
    "sh",
    home.blobs,
  ]);
}

interface Times {
  cold: number[];
  warm: number[];
  dropped: number[];
}

async function main(): Promise<void> {
  const tmp = await mkdtemp(path.join(process.env.KINDLING_BENCH_DIR ?? "/var/tmp", "kindling-coldcat-"));
  const given = args.get("ref");
  const registry = given ? undefined : await startBenchRegistry(tmp);
  const times = new Map<string, Times>(VARIANTS.map((v) => [v, { cold: [], warm: [], dropped: [] }]));
  const loads: number[] = [];
  let bytes = 0;
  try {
    const ref = given ?? `${registry!.host}/bench/big:latest`;
    if (registry) {
      const source = path.join(tmp, "source");
      await kindling(source, ["image", "import", path.join(FIXTURES, "debian-big.tar"), "--name", "big"]);
      await kindling(source, ["image", "push", "--insecure", "big", ref]);
      await releaseHome(new KindlingHome(source));
      await rm(source, { recursive: true, force: true });
    }
    for (let round = 0; round < N; round++) {
      for (const variant of VARIANTS) {
        const env = { ...HOME_ENV, ...VARIANT_ENV[variant] };
        const t = times.get(variant)!;
        const cli = variant.endsWith("@baseline") ? BASELINE_CLI! : KINDLING;
        const root = path.join(tmp, `home-${round}-${variant}`);
        await mkdir(root);
        const home = new KindlingHome(root);
        try {
          loads.push(loadavg()[0]);
          await kindling(root, ["image", "pull", "--insecure", ref], env, undefined, cli);
          const c = await catOnce(root, ref, env, cli);
          const w = await catOnce(root, ref, env, cli);
          await daemonsGone(home, ref);
          await evictChunks(home);
          const d = await catOnce(root, ref, env, cli);
          bytes = c.bytes;
          t.cold.push(c.us);
          t.warm.push(w.us);
          t.dropped.push(d.us);
        } finally {
          await removeHomeNetwork(home).catch(() => {});
          await releaseHome(home);
        }
      }
    }
  } finally {
    await registry?.stop();
    await rm(tmp, { recursive: true, force: true });
  }
  const rate = (us: number) => bytes / us; // bytes/us = MB/s
  const ms = (us: number[]) => us.map((u) => (u / 1000).toFixed(0)).join(", ");
  console.log(
    `# node dist/bench/cold-cat.js --n ${N} --file ${FILE} --variants ${BASE_VARIANTS.join(",")}${BASELINE ? ` --baseline ${BASELINE}` : ""}`,
  );
  console.log(
    `# load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}; ${N} rounds, medians; cat of ${(bytes / 2 ** 20).toFixed(0)} MiB timed inside the container`,
  );
  console.log(
    "| variant | cold MB/s | warm (page cache) MB/s | dropped (chunks local, page cache dropped) MB/s | cold/warm | cold/dropped |",
  );
  console.log("|---|---:|---:|---:|---:|---:|");
  for (const [variant, t] of times) {
    const [c, w, d] = [median(t.cold), median(t.warm), median(t.dropped)];
    console.log(
      `| ${variant} | ${rate(c).toFixed(1)} | ${rate(w).toFixed(1)} | ${rate(d).toFixed(1)} | ${(w / c).toFixed(3)} | ${(d / c).toFixed(3)} |`,
    );
  }
  for (const [variant, t] of times) {
    console.log(
      `${variant}: per round cold ${ms(t.cold)} ms, warm ${ms(t.warm)} ms, dropped ${ms(t.dropped)} ms`,
    );
  }
  for (const [variant, t] of times) {
    const base = times.get(`${variant}@baseline`);
    if (!base) continue;
    console.log(
      `${variant}/baseline speed: cold ${(median(base.cold) / median(t.cold)).toFixed(2)}x, dropped ${(median(base.dropped) / median(t.dropped)).toFixed(2)}x`,
    );
  }
  const dio = times.get("dio");
  for (const [variant, t] of times) {
    if (!dio || variant === "dio" || variant.endsWith("@baseline")) continue;
    console.log(
      `${variant}/dio speed: cold ${(median(dio.cold) / median(t.cold)).toFixed(2)}x, dropped ${(median(dio.dropped) / median(t.dropped)).toFixed(2)}x (target: cold >= 0.333 of warm)`,
    );
  }
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
