/**
 * Fetch rate of the one chunk path (issue 13): a fresh home pulls an image pushed to docker-registry
 * on 127.0.0.1, then loads its first --chunks chunks through chunkReaderFor (store tier, fetcher,
 * verification, commit to blobs/) with C loads in flight, for each C of --conc; interleaved rounds,
 * medians. Shows what concurrency in the fetch path buys on this host.
 * --gogc LIST: then, for each GOGC value, a registry of its own serves the same chunks to curl (one
 * connection, one GET after another): the registry's own cost per request, and its CPU time.
 *   node dist/bench/fetch-rate.js [--fixture debian-minbase.tar] [--chunks 200] [--conc 1,4,8,16] [--rounds 2]
 *     [--gogc 100,800,off]
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { loadavg } from "node:os";
import path from "node:path";
import { benchArgs } from "../src/bench/args.js";
import { FIXTURES } from "../src/bench/images.js";
import { startBenchRegistry } from "../src/bench/registry.js";
import { policyFrom } from "../src/chunks/policy.js";
import { chunkReaderFor } from "../src/chunks/sources.js";
import { importImage } from "../src/image/import.js";
import { pullImage, pushImage } from "../src/image/registry.js";
import { readBlockIndex } from "../src/store/blockindex.js";
import { KindlingHome } from "../src/util/home.js";

const args = benchArgs(
  "node dist/bench/fetch-rate.js [--fixture debian-minbase.tar] [--chunks 200] [--conc 1,4,8,16] [--rounds 2] [--gogc 100,800,off]",
  { options: ["fixture", "chunks", "conc", "rounds", "gogc"] },
);
const FIXTURE = args.str("fixture", "debian-minbase.tar");
const CHUNKS = args.num("chunks", 200);
const CONC = (args.list("conc") ?? ["1", "4", "8", "16"]).map(Number);
const ROUNDS = args.num("rounds", 2);
const GOGC = args.list("gogc") ?? [];
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function main(): Promise<void> {
  const tmp = await mkdtemp("/var/tmp/kindling-fetchrate-");
  const registry = await startBenchRegistry(tmp);
  const results = new Map<number, { ms: number; bytes: number }[]>();
  const loads: number[] = [];
  try {
    const source = new KindlingHome(path.join(tmp, "source")).ensure();
    await importImage(source, path.join(FIXTURES, FIXTURE), { name: "img", progress: false });
    const ref = `${registry.host}/bench/img:latest`;
    await pushImage(source, "img", ref, { insecure: true, progress: false });
    for (let round = 0; round < ROUNDS; round++) {
      for (let k = 0; k < CONC.length; k++) {
        const conc = CONC[(k + round) % CONC.length];
        const root = path.join(tmp, `home-${round}-${conc}`);
        await mkdir(root);
        const home = new KindlingHome(root).ensure();
        const record = await pullImage(home, ref, { insecure: true, progress: false });
        const index = await readBlockIndex(home, record.digest);
        const loader = chunkReaderFor(home, record.origin, policyFrom(), { concurrency: conc });
        const todo = index.chunks.slice(0, CHUNKS);
        loads.push(loadavg()[0]);
        let next = 0;
        let bytes = 0;
        const t0 = performance.now();
        await Promise.all(
          Array.from({ length: conc }, async () => {
            while (next < todo.length) {
              const got = await loader.load(todo[next++]);
              if (got.fetched) bytes += got.data.length;
            }
          }),
        );
        const ms = performance.now() - t0;
        await loader.store.close();
        results.set(conc, [...(results.get(conc) ?? []), { ms, bytes }]);
        await rm(root, { recursive: true, force: true });
      }
    }
  } finally {
    await registry.stop();
    await rm(tmp, { recursive: true, force: true });
  }
  console.log(
    `# node dist/bench/fetch-rate.js --fixture ${FIXTURE} --chunks ${CHUNKS} --conc ${CONC.join(",")} --rounds ${ROUNDS}${GOGC.length ? ` --gogc ${GOGC.join(",")}` : ""}`,
  );
  console.log(
    `# load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}; medians of ${ROUNDS} interleaved rounds`,
  );
  const base = median(results.get(CONC[0])!.map((r) => r.ms));
  console.log("in flight  ms      MB fetched  MB/s   per chunk ms  speedup");
  for (const c of CONC) {
    const rs = results.get(c)!;
    const ms = median(rs.map((r) => r.ms));
    const mb = median(rs.map((r) => r.bytes)) / 1e6;
    console.log(
      `${String(c).padStart(9)}  ${ms.toFixed(0).padStart(6)}  ${mb.toFixed(1).padStart(10)}  ${((mb / ms) * 1000).toFixed(1).padStart(5)}  ${(ms / CHUNKS).toFixed(1).padStart(12)}  ${(base / ms).toFixed(2)}x`,
    );
  }
  if (GOGC.length) await registryCost();
}

/** CPU time (user + system, ms) a process has used so far. */
async function cpuMs(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
}

/** The registry alone: curl GETs the first --chunks chunks one after another, per GOGC value. */
async function registryCost(): Promise<void> {
  console.log("\nregistry alone (curl, one connection, sequential GETs):");
  console.log("GOGC   ms      ms per GET  MB/s   registry CPU ms  CPU ms per GET");
  for (const gogc of GOGC) {
    const tmp = await mkdtemp("/var/tmp/kindling-fetchrate-");
    const registry = await startBenchRegistry(tmp, { env: { GOGC: gogc } });
    try {
      const source = new KindlingHome(path.join(tmp, "source")).ensure();
      await importImage(source, path.join(FIXTURES, FIXTURE), { name: "img", progress: false });
      const ref = `${registry.host}/bench/img:latest`;
      await pushImage(source, "img", ref, { insecure: true, progress: false });
      const index = await readBlockIndex(
        source,
        (await pullImage(source, ref, { insecure: true, progress: false })).digest,
      );
      const todo = index.chunks.slice(0, CHUNKS);
      const args = todo.flatMap((c) => [
        `http://${ref.split("/")[0]}/v2/bench/img/blobs/${c.digest}`,
        "-o",
        "/dev/null",
      ]);
      const cpu0 = await cpuMs(registry.pid);
      const t0 = performance.now();
      await new Promise<void>((resolve, reject) =>
        execFile("curl", ["-sf", ...args], { timeout: 300_000 }, (err) => (err ? reject(err) : resolve())),
      );
      const ms = performance.now() - t0;
      const cpu = (await cpuMs(registry.pid)) - cpu0;
      const mb = todo.reduce((a, c) => a + c.length, 0) / 1e6;
      console.log(
        `${gogc.padEnd(5)}  ${ms.toFixed(0).padStart(6)}  ${(ms / todo.length).toFixed(1).padStart(10)}  ${((mb / ms) * 1000).toFixed(1).padStart(5)}  ${cpu.toFixed(0).padStart(15)}  ${(cpu / todo.length).toFixed(1).padStart(14)}`,
      );
    } finally {
      await registry.stop();
      await rm(tmp, { recursive: true, force: true });
    }
  }
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
