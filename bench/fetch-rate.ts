/**
 * Fetch rate of the one chunk path (issue 13): a fresh home pulls an image pushed to docker-registry
 * on 127.0.0.1, then loads its first --chunks chunks through chunkReaderFor (store tier, fetcher,
 * verification, commit to blobs/) with C loads in flight, for each C of --conc; interleaved rounds,
 * medians. Shows what concurrency in the fetch path buys on this host.
 *   node dist/bench/fetch-rate.js [--fixture debian-minbase.tar] [--chunks 200] [--conc 1,4,8,16] [--rounds 2]
 */
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { loadavg } from "node:os";
import path from "node:path";
import { FIXTURES } from "../src/bench/images.js";
import { startBenchRegistry } from "../src/bench/registry.js";
import { policyFrom } from "../src/chunks/policy.js";
import { chunkReaderFor } from "../src/chunks/sources.js";
import { importImage } from "../src/image/import.js";
import { pullImage, pushImage } from "../src/image/registry.js";
import { readBlockIndex } from "../src/store/blockindex.js";
import { KindlingHome } from "../src/util/home.js";

const argOf = (name: string, dflt: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const FIXTURE = argOf("fixture", "debian-minbase.tar");
const CHUNKS = Number(argOf("chunks", "200"));
const CONC = argOf("conc", "1,4,8,16").split(",").map(Number);
const ROUNDS = Number(argOf("rounds", "2"));
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
    `# node dist/bench/fetch-rate.js --fixture ${FIXTURE} --chunks ${CHUNKS} --conc ${CONC.join(",")} --rounds ${ROUNDS}`,
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
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
