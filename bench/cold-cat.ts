/**
 * Issue 13's large-image target: a sequential `cat` of the largest file of the 1 GB image on a
 * cold worker against the same read warm. The image (scripts/fixtures/debian-big.sh: minbase +
 * 16 files of 64 MiB of incompressible bytes) is imported and pushed to docker-registry on
 * 127.0.0.1 once; each round a fresh KINDLING_HOME pulls it (the index only) and runs
 *   kindling run --runtime runc --network none big -- sh -c 's=$(date +%s%N); cat FILE >/dev/null; ...'
 * twice: cold (every chunk of FILE fetched during the read) and warm (the same home right after:
 * chunks local, the image's shared daemon and SquashFS mount up, page cache warm). The time is
 * taken inside the container around `cat` alone, so only the read is compared.
 *   node dist/bench/cold-cat.js [--n 3] [--file /data/big/blob-07]
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { loadavg } from "node:os";
import path from "node:path";
import { releaseHome } from "../src/bench/homes.js";
import { FIXTURES, REPO } from "../src/bench/images.js";
import { startBenchRegistry } from "../src/bench/registry.js";
import { KindlingHome } from "../src/util/home.js";

const argOf = (name: string): string | undefined => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const N = Number(argOf("n") ?? 3);
const FILE = argOf("file") ?? "/data/big/blob-07";
const KINDLING = path.join(REPO, "dist", "src", "cli", "main.js");
const SCRIPT = `s=$(date +%s%N); cat ${FILE} >/dev/null; e=$(date +%s%N); stat -c %s ${FILE}; echo $(( (e - s) / 1000 ))`;

function kindling(home: string, args: string[], timeoutMs = 1_800_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [KINDLING, ...args], {
      env: { ...process.env, KINDLING_HOME: home },
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
async function catOnce(home: string, ref: string): Promise<{ bytes: number; us: number }> {
  const out = await kindling(home, [
    "run",
    "--runtime",
    "runc",
    "--network",
    "none",
    ref,
    "--",
    "sh",
    "-c",
    SCRIPT,
  ]);
  const [bytes, us] = out.trim().split("\n").map(Number);
  if (!(bytes > 0 && us > 0)) throw new Error(`unexpected output ${JSON.stringify(out)}`);
  return { bytes, us };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function main(): Promise<void> {
  const tmp = await mkdtemp(path.join(process.env.KINDLING_BENCH_DIR ?? "/var/tmp", "kindling-coldcat-"));
  const registry = await startBenchRegistry(tmp);
  const cold: number[] = [];
  const warm: number[] = [];
  const loads: number[] = [];
  let bytes = 0;
  try {
    const source = path.join(tmp, "source");
    await kindling(source, ["image", "import", path.join(FIXTURES, "debian-big.tar"), "--name", "big"]);
    const ref = `${registry.host}/bench/big:latest`;
    await kindling(source, ["image", "push", "--insecure", "big", ref]);
    await releaseHome(new KindlingHome(source));
    await rm(source, { recursive: true, force: true });
    for (let round = 0; round < N; round++) {
      const root = path.join(tmp, `home-${round}`);
      await mkdir(root);
      try {
        loads.push(loadavg()[0]);
        await kindling(root, ["image", "pull", "--insecure", ref]);
        const c = await catOnce(root, ref);
        const w = await catOnce(root, ref);
        bytes = c.bytes;
        cold.push(c.us);
        warm.push(w.us);
      } finally {
        await releaseHome(new KindlingHome(root));
      }
    }
  } finally {
    await registry.stop();
    await rm(tmp, { recursive: true, force: true });
  }
  const rate = (us: number) => bytes / us; // bytes/us = MB/s
  console.log(`# node dist/bench/cold-cat.js --n ${N} --file ${FILE}`);
  console.log(
    `# load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}; ${N} rounds, medians; cat of ${(bytes / 2 ** 20).toFixed(0)} MiB timed inside the container`,
  );
  console.log("| read | ms | MB/s |\n|---|---:|---:|");
  console.log(
    `| cold (fresh home) | ${(median(cold) / 1000).toFixed(0)} | ${rate(median(cold)).toFixed(1)} |`,
  );
  console.log(
    `| warm (same home, after) | ${(median(warm) / 1000).toFixed(0)} | ${rate(median(warm)).toFixed(1)} |`,
  );
  console.log(
    `cold speed / warm speed = ${(median(warm) / median(cold)).toFixed(3)} (target >= 0.333); per round cold ${cold.map((u) => (u / 1000).toFixed(0)).join(", ")} ms, warm ${warm.map((u) => (u / 1000).toFixed(0)).join(", ")} ms`,
  );
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
