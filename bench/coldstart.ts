/**
 * Cold start on a fresh worker (issue 13), measured as a user sees it, through the CLI:
 *   cold:     a fresh KINDLING_HOME: `kindling image pull --insecure REF` + `kindling run --runtime runc REF -- CMD`,
 *             REF pushed without a startup profile
 *   profiled: the same, REF pushed after one run in the pushing home (so with its startup profile)
 *   warm:     the run again in the cold home (chunks in its store, its shared lazy daemon still up)
 *   baseline: without Kindling: `skopeo copy` of the whole OCI image (same tree, gzip layer) to an OCI
 *             layout, `umoci unpack`, `runc run` of the unpacked bundle.
 * All from one docker-registry on 127.0.0.1, interleaved per round (order rotated), medians and ratios.
 *   node dist/bench/coldstart.js [--n 3] [--fixture debian-numpy.tar] [--cmd "python3 -c 'import numpy; print(numpy.__version__)'"]
 * The fixture is built by scripts/fixtures/debian-numpy.sh (.cache/fixtures). KINDLING_BENCH_CLI=path/to/main.js
 * measures another build's CLI (e.g. main before a change).
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { loadavg } from "node:os";
import path from "node:path";
import { releaseHome } from "../src/bench/homes.js";
import { FIXTURES, REPO } from "../src/bench/images.js";
import { startBenchRegistry } from "../src/bench/registry.js";
import { readBlockIndex } from "../src/store/blockindex.js";
import { loadImage } from "../src/store/catalog.js";
import { localBytes } from "../src/store/local.js";
import { KindlingHome } from "../src/util/home.js";

const argOf = (name: string): string | undefined => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const N = Number(argOf("n") ?? 3);
const FIXTURE = argOf("fixture") ?? "debian-numpy.tar";
const CMD = ["python3", "-c", argOf("py") ?? "import numpy; print(numpy.__version__)"];
const KINDLING = process.env.KINDLING_BENCH_CLI ?? path.join(REPO, "dist", "src", "cli", "main.js");

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const now = () => performance.now();

interface Ran {
  ms: number;
  /** Start -> first byte on stdout. */
  firstOutputMs: number;
  out: string;
}

/** Runs a command to the end (bounded); throws with its stderr tail on failure. */
function run(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
  timeoutMs = 600_000,
): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const t0 = now();
    let first = Number.NaN;
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const child = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.stdout.on("data", (d: Buffer) => {
      if (Number.isNaN(first)) first = now() - t0;
      out.push(d);
    });
    child.stderr.on("data", (d: Buffer) => err.push(d));
    child.on("error", reject);
    child.on("close", (code, sig) => {
      clearTimeout(timer);
      const ms = now() - t0;
      if (code !== 0) {
        const tail = Buffer.concat(err).toString().trim().slice(-600);
        reject(new Error(`${cmd} ${args.join(" ")}: ${sig ?? `status ${code}`}: ${tail}`));
      } else resolve({ ms, firstOutputMs: first, out: Buffer.concat(out).toString() });
    });
  });
}

const kindling = (home: string, args: string[]) =>
  run(process.execPath, [KINDLING, ...args], { ...process.env, KINDLING_HOME: home });

/** Builds an OCI image layout holding the fixture's tree in one layer (the baseline's image). */
async function buildOci(tmp: string, fixture: string): Promise<string> {
  const oci = path.join(tmp, "oci");
  const bundle = path.join(tmp, "oci-bundle");
  await run("umoci", ["init", "--layout", oci]);
  await run("umoci", ["new", "--image", `${oci}:latest`]);
  await run("umoci", ["unpack", "--image", `${oci}:latest`, bundle]);
  await run("tar", ["-C", path.join(bundle, "rootfs"), "--numeric-owner", "-xf", fixture]);
  await run("umoci", ["repack", "--image", `${oci}:latest`, bundle]);
  await run("umoci", ["config", "--image", `${oci}:latest`, "--config.env", "PATH=/usr/bin:/bin"]);
  await rm(bundle, { recursive: true, force: true });
  return oci;
}

interface Row {
  variant: "cold" | "profiled" | "warm" | "warm-profiled" | "baseline";
  ms: number;
  firstOutputMs: number;
  fetchedBytes?: number;
  pullMs?: number;
}

async function main(): Promise<void> {
  const fixture = path.join(FIXTURES, FIXTURE);
  const tmp = await mkdtemp(path.join(process.env.KINDLING_BENCH_DIR ?? "/var/tmp", "kindling-coldstart-"));
  const registry = await startBenchRegistry(tmp);
  const rows: Row[] = [];
  const loads: number[] = [];
  let blockSize = 0;
  let blockRef = "";
  let ociRef = "";
  let profiledRef = "";
  try {
    const source = path.join(tmp, "source");
    await kindling(source, ["image", "import", fixture, "--name", "numpy"]);
    blockRef = `${registry.host}/bench/numpy:latest`;
    await kindling(source, ["image", "push", "--insecure", "numpy", blockRef]);
    blockSize = (await loadImage(new KindlingHome(source), "numpy")).blockSize;
    // One run in the pushing home records the startup profile; the second tag carries it.
    profiledRef = `${registry.host}/bench/numpy:profiled`;
    await kindling(source, ["run", "--runtime", "runc", "numpy", "--", ...CMD]);
    await new Promise((r) => setTimeout(r, 1500)); // the daemon writes the profile within 1 s
    await kindling(source, ["image", "push", "--insecure", "numpy", profiledRef]);
    await releaseHome(new KindlingHome(source));
    ociRef = `${registry.host}/bench/numpy-oci:latest`;
    const oci = await buildOci(tmp, fixture);
    await run("skopeo", [
      "copy",
      "--quiet",
      "--dest-tls-verify=false",
      `oci:${oci}:latest`,
      `docker://${ociRef}`,
    ]);
    await rm(oci, { recursive: true, force: true });

    for (let round = 0; round < N; round++) {
      const order = [0, 1, 2].map((k) => (k + round) % 3);
      for (const which of order) {
        loads.push(loadavg()[0]);
        if (which === 0) rows.push(...(await kindlingRound(tmp, `${round}`, blockRef, "cold")));
        else if (which === 1) rows.push(...(await kindlingRound(tmp, `${round}p`, profiledRef, "profiled")));
        else rows.push(await baselineRound(tmp, round, ociRef));
      }
    }
  } finally {
    await registry.stop();
    await rm(tmp, { recursive: true, force: true });
  }
  report(rows, blockSize, loads);
}

/** A fresh home: pull + cold run, then the warm run. */
async function kindlingRound(
  tmp: string,
  round: string,
  ref: string,
  variant: "cold" | "profiled",
): Promise<Row[]> {
  const root = path.join(tmp, `home-${round}`);
  await mkdir(root);
  const home = new KindlingHome(root);
  try {
    const t0 = now();
    await kindling(root, ["image", "pull", "--insecure", ref]);
    const pullMs = now() - t0;
    const cold = await kindling(root, ["run", "--runtime", "runc", ref, "--", ...CMD]);
    const record = await loadImage(home, ref);
    const fetchedBytes = await localBytes(home, await readBlockIndex(home, record.digest));
    const warm = await kindling(root, ["run", "--runtime", "runc", ref, "--", ...CMD]);
    if (!cold.out.trim() || cold.out !== warm.out)
      throw new Error(`unexpected output ${JSON.stringify(cold.out)}`);
    return [
      {
        variant,
        ms: pullMs + cold.ms,
        firstOutputMs: pullMs + cold.firstOutputMs,
        fetchedBytes,
        pullMs,
      },
      {
        variant: variant === "cold" ? "warm" : "warm-profiled",
        ms: warm.ms,
        firstOutputMs: warm.firstOutputMs,
      },
    ];
  } finally {
    await releaseHome(home);
  }
}

/** Without Kindling: skopeo copy to an OCI layout, umoci unpack, runc run. */
async function baselineRound(tmp: string, round: number, ref: string): Promise<Row> {
  const dir = path.join(tmp, `baseline-${round}`);
  await mkdir(dir);
  try {
    const t0 = now();
    const layout = path.join(dir, "oci");
    const bundle = path.join(dir, "bundle");
    await run("skopeo", [
      "copy",
      "--quiet",
      "--src-tls-verify=false",
      `docker://${ref}`,
      `oci:${layout}:latest`,
    ]);
    const pullMs = now() - t0;
    await run("umoci", ["unpack", "--image", `${layout}:latest`, bundle]);
    const specFile = path.join(bundle, "config.json");
    const spec = JSON.parse(await readFile(specFile, "utf8"));
    spec.process.args = CMD;
    spec.process.terminal = false;
    await writeFile(specFile, JSON.stringify(spec));
    const r = await run("runc", ["run", "--bundle", bundle, `coldstart-bench-${process.pid}-${round}`]);
    return {
      variant: "baseline",
      ms: now() - t0,
      firstOutputMs: now() - t0 - r.ms + r.firstOutputMs,
      pullMs,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function report(rows: Row[], blockSize: number, loads: number[]): void {
  const of = (v: Row["variant"]) => rows.filter((r) => r.variant === v);
  const med = (v: Row["variant"], k: "ms" | "firstOutputMs" | "pullMs" | "fetchedBytes") =>
    median(of(v).map((r) => r[k] ?? 0));
  const mb = (b: number) => `${(b / 1e6).toFixed(1)} MB`;
  const cli = process.env.KINDLING_BENCH_CLI ? `KINDLING_BENCH_CLI=${process.env.KINDLING_BENCH_CLI} ` : "";
  console.log(`# ${cli}node dist/bench/coldstart.js --n ${N} --fixture ${FIXTURE}`);
  console.log(
    `# workload: python3 -c '${CMD[2]}'; load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}; ${N} interleaved rounds, medians; block image ${mb(blockSize)}`,
  );
  console.log("variant        total_ms  first_output_ms  pull_ms  fetchedBytes           fetch rate");
  for (const v of ["cold", "profiled", "warm", "warm-profiled", "baseline"] as const) {
    if (of(v).length === 0) continue;
    const fetched = med(v, "fetchedBytes");
    const runMs = med(v, "ms") - med(v, "pullMs");
    const f = v === "cold" || v === "profiled";
    console.log(
      [
        v.padEnd(13),
        med(v, "ms").toFixed(0).padStart(9),
        med(v, "firstOutputMs").toFixed(0).padStart(16),
        (v.startsWith("warm") ? "-" : med(v, "pullMs").toFixed(0)).padStart(8),
        (f ? `${mb(fetched)} (${((100 * fetched) / blockSize).toFixed(1)}%)` : "-").padEnd(22),
        f ? `${mb((fetched / runMs) * 1000)}/s` : "-",
      ].join(" "),
    );
  }
  const base = med("baseline", "ms");
  for (const v of ["cold", "profiled"] as const) {
    if (of(v).length === 0) continue;
    const warm = med(v === "cold" ? "warm" : "warm-profiled", "ms");
    console.log(
      `${v}: cold/warm = ${(med(v, "ms") / warm).toFixed(2)}x (target <= 2), baseline/cold = ${(base / med(v, "ms")).toFixed(2)}x (target >= 5), fetched ${((100 * med(v, "fetchedBytes")) / blockSize).toFixed(1)}% (target <= 25%)`,
    );
  }
  console.log(
    "fetch rate: fetchedBytes / (total - pull); first_output: start of the pull -> first byte on stdout",
  );
  console.log(`per round: ${rows.map((r) => `${r.variant}=${r.ms.toFixed(0)}`).join(" ")}`);
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
