/**
 * Cold start on a fresh worker (issue 13), measured as a user sees it, through the CLI:
 *   cold:     a fresh KINDLING_HOME: `kindling image pull --insecure REF` +
 *             `kindling run --runtime runc --network none REF -- CMD`, REF pushed without a startup
 *             profile, file-aware readahead off (KINDLING_LAZY_FILE_READAHEAD=0)
 *   files:    the same with file-aware readahead (KINDLING_LAZY_FILE_READAHEAD=8388608; off by default)
 *   profiled: REF pushed after one run in the pushing home (so with its startup profile), file-aware
 *             readahead off
 *   profiled+files: profile and file-aware readahead
 *   cold-nopacks, profiled-nopacks: cold and profiled with REF pushed `--no-packs` (chunk by chunk,
 *             as before packs: no segments, no startup pack)
 *   profiled-chunks: profiled, REF pushed from a home without the recorded read ranges (a startup pack of
 *             the profile's whole chunks, as before startup ranges)
 *   profiled-nostart: profiled with KINDLING_PULL_START_DAEMON=0 (the pull does not start the image's
 *             lazy daemon; the run does, as before)
 *   sorted+files, sorted+profiled+files: the same image rebuilt with its startup files first
 *             (`mksquashfs -sort` by the first run's profile: blockimage/sortlist.ts), without and
 *             with its own profile
 *   VARIANT@COMPRESSION (cold, files, profiled, profiled+files, profiled-nostart): the same with the
 *             image imported `--compression COMPRESSION` (lz4, lz4:hc, zstd:1, gzip:6, none, ...)
 *   warm:     the run again in that cold home (chunks in its store, its shared lazy daemon still up)
 *   baseline: without Kindling: `skopeo copy` of the whole OCI image (same tree, gzip layer) to an OCI
 *             layout, `umoci unpack`, `runc run` of the unpacked bundle (no network setup either:
 *             hence `--network none` for Kindling's runs).
 * All from one docker-registry on 127.0.0.1, interleaved per round (order rotated), medians and ratios.
 * From the lazy daemon's counters (trace.ts) each cold row also gets: time to the first chunk byte,
 * time readers spent blocked, requests in flight over time (--trace-out FILE writes the timelines);
 * from the KINDLING_TRACE steps of the pull and the runs (src/util/trace.ts), a "phases" line per
 * variant: the lazy daemon's start to serving, the run's wait for the image, the process's time.
 *   node dist/bench/coldstart.js [--n 3] [--fixture debian-numpy.tar] [--py "import numpy"]
 *     [--variants cold,profiled,baseline (default; also files, profiled+files, sorted+files,
 *      sorted+profiled+files, cold-nopacks, profiled-nopacks, profiled-nostart, profiled-chunks,
 *      and e.g. cold@lz4, profiled@lz4:hc)] [--trace-out FILE]
 *     [--reuse debian-minbase.tar (chunk reuse with that image)]
 *     [--registry HOST (reuse images an earlier setup pushed to HOST: bench/numpy:latest, :profiled,
 *      :profiled-chunks, bench/numpy-oci:latest; no import or push, no registry CPU; for iterating only)]
 *     [--baseline DIR (each Kindling variant also runs with the build in DIR, e.g. main before a
 *      change: rows "VARIANT (base)", in the same interleaved rounds)]
 * The fixture is built by scripts/fixtures/debian-numpy.sh (.cache/fixtures). The CLI is bin/kindling,
 * as a user runs it (KINDLING_BENCH_CLI=path/to/bin/kindling or main.js measures another entry).
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { loadavg } from "node:os";
import path from "node:path";
import { benchArgs } from "../src/bench/args.js";
import { releaseHome } from "../src/bench/homes.js";
import { FIXTURES, REPO } from "../src/bench/images.js";
import { startBenchRegistry } from "../src/bench/registry.js";
import { type ReadAt, readSquashfsFiles } from "../src/blockimage/layout.js";
import { chunkSpans, startupFiles } from "../src/blockimage/sortlist.js";
import { buildImage } from "../src/image/build.js";
import { chunksIn } from "../src/lazy/chunkmap.js";
import { liveDaemonPids } from "../src/lazy/index.js";
import { checkProfile, profileReadsPath, readProfileFile, readProfileReads } from "../src/lazy/profile.js";
import { statsDir } from "../src/lazy/stats.js";
import type { LazyStats } from "../src/lazy/types.js";
import { removeHomeNetwork } from "../src/network/conflist.js";
import { readBlockIndex } from "../src/store/blockindex.js";
import { loadImage } from "../src/store/catalog.js";
import { localBytes } from "../src/store/local.js";
import type { BlockIndex, ImageRecord } from "../src/store/types.js";
import { KindlingHome } from "../src/util/home.js";

const args = benchArgs(
  "node dist/bench/coldstart.js [--n 3] [--fixture debian-numpy.tar] [--py CODE] [--variants a,b] [--trace-out FILE] [--registry HOST] [--reuse FIXTURE] [--baseline DIR]",
  { options: ["n", "fixture", "py", "variants", "trace-out", "registry", "reuse", "baseline"] },
);
const N = args.num("n", 3);
const FIXTURE = args.str("fixture", "debian-numpy.tar");
const CMD = ["python3", "-c", args.str("py", "import numpy; print(numpy.__version__)")];
const KINDLING = process.env.KINDLING_BENCH_CLI ?? path.join(REPO, "bin", "kindling");
/** --baseline DIR: another build (a checkout with dist/ built) whose CLI runs each Kindling variant too. */
const BASELINE = args.get("baseline");
const BASE_CLI = BASELINE ? path.join(path.resolve(BASELINE), "bin", "kindling") : undefined;
/** Which build's CLI a round runs: this one, or --baseline's. */
type Build = "this" | "base";
const BUILDS: Build[] = BASELINE ? ["this", "base"] : ["this"];
const TRACE_OUT = args.get("trace-out");
/** --registry HOST: the images are pushed there already (bench/numpy:latest, :profiled; a run of this bench left them): no import, no push (for iterating). */
const REGISTRY = args.get("registry");
/** --reuse FIXTURE: also measure chunk reuse between FIXTURE's image and the numpy images. */
const REUSE = args.get("reuse");

type BaseVariant =
  | "cold"
  | "profiled-nostart"
  | "profiled-chunks"
  | "cold-nopacks"
  | "profiled-nopacks"
  | "files"
  | "profiled"
  | "profiled+files"
  | "sorted+files"
  | "sorted+profiled+files";
/** VARIANT@COMPRESSION: the same with the image imported `--compression COMPRESSION` (e.g. profiled@lz4). */
type ColdVariant = BaseVariant | `${BaseVariant}@${string}`;
type Variant = ColdVariant | "baseline";
const ALL: (BaseVariant | "baseline")[] = [
  "cold",
  "profiled-nostart",
  "profiled-chunks",
  "cold-nopacks",
  "profiled-nopacks",
  "files",
  "profiled",
  "profiled+files",
  "sorted+files",
  "sorted+profiled+files",
  "baseline",
];
/** The product's defaults: file-aware readahead off, a profile when the image carries one. */
const DEFAULT_VARIANTS: Variant[] = ["cold", "profiled", "baseline"];
const VARIANTS = (args.list("variants") ?? DEFAULT_VARIANTS) as Variant[];
/** A variant without its @compression, and the compression (undefined: the default's image). */
const baseOf = (v: ColdVariant) => v.split("@")[0] as BaseVariant;
const compressionOf = (v: Variant) => (v.includes("@") ? v.slice(v.indexOf("@") + 1) : undefined);
/** Variants whose image another compression can rebuild (they need only the plain and profiled pushes). */
const WITH_COMPRESSION: BaseVariant[] = ["cold", "files", "profiled", "profiled+files", "profiled-nostart"];
for (const v of VARIANTS) {
  const base = v === "baseline" ? v : baseOf(v);
  if (!ALL.includes(base)) throw new Error(`unknown variant ${v} (${ALL.join(", ")})`);
  if (compressionOf(v) && !WITH_COMPRESSION.includes(base as BaseVariant))
    throw new Error(`${v}: only ${WITH_COMPRESSION.join(", ")} take @compression`);
}
/** The compressions the variants ask for besides the default, and each one's image tag and import time. */
const COMPRESSIONS = [...new Set(VARIANTS.map(compressionOf).filter((c) => c !== undefined))];
const compressionTag = (c: string) => `numpy-${c.replace(":", "-")}`;
const importMs = new Map<string, number>();

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
  /** Epoch ms at the start. */
  startedAt: number;
}

/** Runs a command to the end (bounded); throws with its stderr tail on failure. */
function run(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
  timeoutMs = 600_000,
): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const startedAt = Date.now();
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
      } else resolve({ ms, firstOutputMs: first, out: Buffer.concat(out).toString(), startedAt });
    });
  });
}

const kindling = (home: string, args: string[], env: NodeJS.ProcessEnv = {}, build: Build = "this") =>
  run(process.execPath, [build === "base" ? BASE_CLI! : KINDLING, ...args], {
    ...process.env,
    KINDLING_HOME: home,
    ...env,
  });
/** The workload as Kindling runs it: runc, and no network (the baseline sets up none either). */
const runArgs = (ref: string) => ["run", "--runtime", "runc", "--network", "none", ref, "--", ...CMD];

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

/** What the cold run's lazy daemon saw (its counters, read right after the run). */
interface DaemonView {
  /** Run start -> first verified chunk from the registry (ms). */
  ttfbMs: number;
  /** Bytes of the lazy file returned to readers (what the run read of the block image). */
  servedBytes: number;
  /** Wall time with a reader blocked on a chunk, and the summed waits of all readers (ms). */
  blockedMs: number;
  readWaitMs: number;
  slowReads: number;
  maxWaitMs: number;
  /** Chunks fetched, and the mean time of one request at the source / waiting for a slot (ms). */
  chunks: number;
  requestMs: number;
  queuedMs: number;
  /** First to last chunk from the source (ms). */
  fetchSpanMs: number;
  /** Chunks fetched by file-aware readahead and by the profile prefetch. */
  fileChunks: number;
  profileChunks: number;
  /** CPU time (user+system) of the lazy daemon, and of the registry during the cold run (ms). */
  daemonCpuMs: number;
  registryCpuMs: number;
  timeline: LazyStats["trace"]["timeline"];
}

/** CPU time (user + system, ms) a process has used so far; 0 if it is gone. */
async function cpuMs(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return stat ? ((Number(f[11]) + Number(f[12])) * 1000) / 100 : 0;
}

/** The bench registry's pid (docker-registry serving from under `tmp`). */
async function registryPid(tmp: string): Promise<number> {
  for (const d of await readdir("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    const cmd = await readFile(`/proc/${d}/cmdline`, "utf8").catch(() => "");
    if (cmd.startsWith("docker-registry\0serve\0") && cmd.includes(tmp)) return Number(d);
  }
  return 0;
}

interface Row {
  variant: Variant | "warm";
  /** The build whose CLI ran it (--baseline); Kindling rows only. */
  build?: Build;
  /** The pulled image's block image size (bytes); cold rows only. */
  blockSize?: number;
  of?: ColdVariant;
  ms: number;
  firstOutputMs: number;
  /** Chunks of the image local right after the run, and once the daemon's background work settled. */
  fetchedBytes?: number;
  settledBytes?: number;
  pullMs?: number;
  daemon?: DaemonView;
  /** From the run's KINDLING_TRACE steps (phases()). */
  phases?: Phases;
}

/** Where a run's time went, from its KINDLING_TRACE steps (ms; NaN when a step is missing). */
interface Phases {
  /** The pull's CLI: its process start -> its commands loaded (Node's start and module load). */
  pullLoadMs: number;
  /** The pull's last step (its lazy daemon spawned) -> its process gone (as the bench saw it end). */
  pullTailMs: number;
  /** The lazy daemon's process start -> its modules loaded. */
  daemonLoadMs: number;
  /** The run's CLI: its process start -> its request sent to the service. */
  runCliMs: number;
  /** The lazy daemon's process start to serving (its mounts done): the cold run's daemon. */
  daemonStartMs: number;
  /** The supervisor's wait for the image (client attached -> block image opened). */
  imageWaitMs: number;
  /** The container's process started -> its first output (python's import through the rootfs). */
  processMs: number;
}

/**
 * Phases of one run from its trace file (lines "<epoch ms> <who>:<pid> <step>"). `pullEnd`: the epoch
 * ms the pull's process was seen to end (cold traces: the pull's CLI is the file's first process).
 */
async function phases(file: string, pullEnd = Number.NaN): Promise<Phases> {
  const steps = new Map<string, number>();
  /** The CLI processes in order of their first line (the pull's, then the run's). */
  const clis: Map<string, number>[] = [];
  const byPid = new Map<string, Map<string, number>>();
  for (const line of (await readFile(file, "utf8").catch(() => "")).split("\n")) {
    const m = /^([\d.]+) (\S+) (.*)$/.exec(line);
    if (!m) continue;
    if (!steps.has(m[3]!)) steps.set(m[3]!, Number(m[1]));
    let own = byPid.get(m[2]!);
    if (!own) {
      own = new Map();
      byPid.set(m[2]!, own);
      if (m[2]!.startsWith("cli:")) clis.push(own);
    }
    if (!own.has(m[3]!)) own.set(m[3]!, Number(m[1]));
  }
  const span = (a: string, b: string, of = steps) => (of.get(b) ?? Number.NaN) - (of.get(a) ?? Number.NaN);
  const pull = clis.find((c) => c.has("pull: recorded"));
  const runCli = clis.find((c) => c.has("client: create sent"));
  return {
    pullLoadMs: pull ? span("cli: process start", "cli: commands loaded, config resolved", pull) : Number.NaN,
    pullTailMs: pullEnd - (pull?.get("pull: lazy daemon spawned") ?? Number.NaN),
    // "lazy: modules loaded" since the daemon can start before its config exists (an early start)
    daemonLoadMs: steps.has("lazy: modules loaded")
      ? span("lazy: process start", "lazy: modules loaded")
      : span("lazy: process start", "lazy: modules loaded, config read"),
    runCliMs: runCli ? span("cli: process start", "client: create sent", runCli) : Number.NaN,
    daemonStartMs: span("lazy: process start", "lazy: serving"),
    // 0 when the image was open before the client attached (a warm run opens it meanwhile)
    imageWaitMs: Math.max(0, span("supervisor: client attached", "rootfs: block image opened")),
    processMs: span("supervisor: started", "supervisor: first stdout"),
  };
}

/** Fresh counters of the image's lazy daemons in `home` (asked with SIGUSR2, as `image inspect` does). */
async function daemonStats(home: KindlingHome, digest: string): Promise<LazyStats | undefined> {
  const asked = new Date().toISOString();
  const pids = await liveDaemonPids(home, digest);
  for (const pid of pids) process.kill(pid, "SIGUSR2");
  const dir = statsDir(home, digest);
  const readAll = async () => {
    const all: LazyStats[] = [];
    for (const f of await readdir(dir).catch(() => [] as string[])) {
      if (!f.endsWith(".json")) continue;
      const s = JSON.parse(await readFile(path.join(dir, f), "utf8").catch(() => "null")) as LazyStats | null;
      if (s) all.push(s);
    }
    return all;
  };
  for (let waited = 0; waited < 3000; waited += 20) {
    const all = await readAll();
    if (all.length > 0 && (pids.length === 0 || all.every((s) => s.updated >= asked))) {
      return all.sort((a, b) => b.bytesFetched - a.bytesFetched)[0];
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return (await readAll()).sort((a, b) => b.bytesFetched - a.bytesFetched)[0];
}

function viewOf(s: LazyStats, runStartedAt: number, cpu: { daemon: number; registry: number }): DaemonView {
  const chunks = Math.max(1, s.chunksFetched);
  return {
    ttfbMs: s.firstChunkAt ? s.firstChunkAt - runStartedAt : Number.NaN,
    servedBytes: s.bytesServed,
    blockedMs: s.trace.blockedMs,
    readWaitMs: s.trace.readWaitMs,
    slowReads: s.trace.slowReads,
    maxWaitMs: s.trace.maxWaitMs,
    chunks: s.chunksFetched,
    requestMs: s.sourceMs / chunks,
    queuedMs: s.queuedMs / chunks,
    fetchSpanMs: s.firstChunkAt && s.lastChunkAt ? s.lastChunkAt - s.firstChunkAt : 0,
    fileChunks: s.fileReadahead?.chunks ?? 0,
    profileChunks: s.profile?.chunks ?? 0,
    daemonCpuMs: cpu.daemon,
    registryCpuMs: cpu.registry,
    timeline: s.trace.timeline,
  };
}

let sortedFiles = 0;
/** The image's block size (from the first cold home's record). */
let blockSize = 0;
let reuse = "";

/** Reads the block image of a local image from its home's chunks. */
function storeReader(home: KindlingHome, index: BlockIndex): ReadAt {
  return async (pos, len) => {
    const parts: Buffer[] = [];
    for (const i of chunksIn(index, pos, len)) {
      const c = index.chunks[i];
      const data = await readFile(home.blobPath(c.digest));
      parts.push(data.subarray(Math.max(0, pos - c.offset), Math.min(c.length, pos + len - c.offset)));
    }
    return Buffer.concat(parts);
  };
}

/** The startup files of `record` by its recorded profile (empty without one). */
async function profileOrder(home: KindlingHome, record: ImageRecord): Promise<string[]> {
  const index = await readBlockIndex(home, record.digest);
  const profile = checkProfile(
    await readProfileFile(home, record.digest),
    record.digest,
    index.chunks.length,
  );
  if (!("chunks" in profile)) throw new Error(`no startup profile for ${record.name}`);
  const { files } = await readSquashfsFiles(storeReader(home, index), { names: true });
  // What the run read, if the home kept it; else the profile's whole chunks.
  const reads = await readProfileReads(home, record.digest);
  return startupFiles(files, reads ?? chunkSpans(index, profile.chunks));
}

/**
 * How much of the numpy image (default and profile-ordered) a worker that has `base` already holds:
 * bytes of its chunks whose digest is also one of base's chunks.
 */
async function chunkReuse(home: KindlingHome, base: string): Promise<string> {
  await kindling(home.root, ["image", "import", base, "--name", "base"]);
  const digests = async (name: string) => {
    const index = await readBlockIndex(home, (await loadImage(home, name)).digest);
    return index;
  };
  const baseIndex = await digests("base");
  const have = new Set(baseIndex.chunks.map((c) => c.digest));
  const line = async (name: string) => {
    const index = await digests(name);
    const shared = index.chunks.filter((c) => have.has(c.digest)).reduce((a, c) => a + c.length, 0);
    return `${name} ${((100 * shared) / index.blockSize).toFixed(1)}% (${(shared / 1e6).toFixed(1)} of ${(index.blockSize / 1e6).toFixed(1)} MB)`;
  };
  return `chunk reuse with ${path.basename(base)} (${(baseIndex.blockSize / 1e6).toFixed(1)} MB): ${await line("numpy")}, ${await line("numpy-sorted")}`;
}

async function main(): Promise<void> {
  const fixture = path.join(FIXTURES, FIXTURE);
  const tmp = await mkdtemp(path.join(process.env.KINDLING_BENCH_DIR ?? "/var/tmp", "kindling-coldstart-"));
  const registry = REGISTRY ? { host: REGISTRY, stop: async () => {} } : await startBenchRegistry(tmp);
  const rows: Row[] = [];
  const loads: number[] = [];
  const refs: Partial<Record<Variant, string>> = {};
  try {
    if (REGISTRY) {
      for (const v of VARIANTS) {
        if (v === "baseline") refs[v] = `${REGISTRY}/bench/numpy-oci:latest`;
        else {
          const tag = v === "profiled-chunks" ? v : v.startsWith("profiled") ? "profiled" : "latest";
          const c = compressionOf(v);
          refs[v] = `${REGISTRY}/bench/${c ? compressionTag(c) : "numpy"}:${tag}`;
        }
      }
    } else await setup(tmp, registry.host, fixture, refs);
    // Found once: a scan of /proc between the pull and the run would give the pull's daemon time.
    const regPid = REGISTRY ? 0 : await registryPid(tmp);
    type Unit = { v: Variant; build: Build };
    const units = VARIANTS.flatMap((v): Unit[] =>
      v === "baseline" ? [{ v, build: "this" }] : BUILDS.map((build) => ({ v, build })),
    );
    for (let round = 0; round < N; round++) {
      const order = units.map((_, k) => units[(k + round) % units.length]!);
      for (const { v, build } of order) {
        loads.push(loadavg()[0]);
        if (v === "baseline") rows.push(await baselineRound(tmp, round, refs.baseline!));
        else {
          // the round's name is a path (its home): no "+", "@" or ":" (overlayfs options)
          const name = `${round}-${v.replace(/[^\w-]/g, "-")}${build === "base" ? "-base" : ""}`;
          rows.push(...(await kindlingRound(tmp, name, refs[v]!, v, build, regPid)));
        }
      }
    }
  } finally {
    await registry.stop();
    await rm(tmp, { recursive: true, force: true });
  }
  report(rows, blockSize, loads);
  if (sortedFiles)
    console.log(`sorted build: ${sortedFiles} files placed first (the profile's, in its order)`);
  if (reuse) console.log(reuse);
  if (TRACE_OUT) {
    const traces = rows.filter((r) => r.daemon).map((r) => ({ variant: r.variant, ms: r.ms, ...r.daemon }));
    await writeFile(TRACE_OUT, `${JSON.stringify(traces)}\n`);
    console.log(`timelines: ${TRACE_OUT}`);
  }
}

/** The bench's images: imported, pushed plain, run once (the profile), pushed with it; the baseline's OCI image. */
async function setup(
  tmp: string,
  host: string,
  fixture: string,
  refs: Partial<Record<Variant, string>>,
): Promise<void> {
  const registry = { host };
  {
    const source = path.join(tmp, "source");
    const t0 = now();
    await kindling(source, ["image", "import", fixture, "--name", "numpy"]);
    importMs.set("default", now() - t0);
    const plain = `${registry.host}/bench/numpy:latest`;
    await kindling(source, ["image", "push", "--insecure", "numpy", plain]);
    refs.cold = plain;
    refs.files = plain;
    // One run in the pushing home records the startup profile; the second tag carries it.
    const profiled = `${registry.host}/bench/numpy:profiled`;
    await kindling(source, runArgs("numpy"));
    await new Promise((r) => setTimeout(r, 1500)); // the daemon writes the profile within 1 s
    await kindling(source, ["image", "push", "--insecure", "numpy", profiled]);
    refs.profiled = profiled;
    refs["profiled-nostart"] = profiled;
    refs["profiled+files"] = profiled;
    if (VARIANTS.includes("profiled-chunks")) {
      // The same profile without the recorded read ranges: a startup pack of whole chunks.
      const home = new KindlingHome(source);
      const digest = (await loadImage(home, "numpy")).digest;
      const reads = profileReadsPath(home, digest);
      await rename(reads, `${reads}.aside`);
      refs["profiled-chunks"] = `${registry.host}/bench/numpy:profiled-chunks`;
      await kindling(source, ["image", "push", "--insecure", "numpy", refs["profiled-chunks"]]);
      await rename(`${reads}.aside`, reads);
    }
    if (VARIANTS.some((v) => v.endsWith("nopacks"))) {
      // The same two pushes without packs (the profile still travels in the config).
      await kindling(source, ["image", "push", "--insecure", "--no-packs", "numpy", `${plain}-nopacks`]);
      await kindling(source, ["image", "push", "--insecure", "--no-packs", "numpy", `${profiled}-nopacks`]);
      refs["cold-nopacks"] = `${plain}-nopacks`;
      refs["profiled-nopacks"] = `${profiled}-nopacks`;
    }
    if (VARIANTS.some((v) => v.startsWith("sorted")) || REUSE) {
      // The profile-ordered build: the files the profile read first, in its order (-sort).
      const home = new KindlingHome(source);
      const order = await profileOrder(home, await loadImage(home, "numpy"));
      await buildImage(home, {
        name: "numpy-sorted",
        layers: [{ path: fixture }],
        configJson: null,
        origin: { kind: "local" },
        progress: false,
        layoutOrder: order,
      });
      sortedFiles = order.length;
      refs["sorted+files"] = `${registry.host}/bench/numpy:sorted`;
      await kindling(source, ["image", "push", "--insecure", "numpy-sorted", refs["sorted+files"]]);
      await kindling(source, runArgs("numpy-sorted"));
      await new Promise((r) => setTimeout(r, 1500));
      refs["sorted+profiled+files"] = `${registry.host}/bench/numpy:sorted-profiled`;
      await kindling(source, ["image", "push", "--insecure", "numpy-sorted", refs["sorted+profiled+files"]]);
      if (REUSE) reuse = await chunkReuse(home, path.join(FIXTURES, REUSE));
    }
    for (const c of COMPRESSIONS) {
      // The same image imported with another compressor, pushed plain and after a run (profiled).
      const name = compressionTag(c);
      const t0 = now();
      await kindling(source, ["image", "import", fixture, "--name", name, "--compression", c]);
      importMs.set(c, now() - t0);
      const ref = `${registry.host}/bench/${name}`;
      await kindling(source, ["image", "push", "--insecure", name, `${ref}:latest`]);
      await kindling(source, runArgs(name));
      await new Promise((r) => setTimeout(r, 1500));
      await kindling(source, ["image", "push", "--insecure", name, `${ref}:profiled`]);
      for (const v of VARIANTS) {
        if (compressionOf(v) === c) refs[v] = `${ref}:${v.startsWith("profiled") ? "profiled" : "latest"}`;
      }
    }
    await releaseHome(new KindlingHome(source));
    if (VARIANTS.includes("baseline")) {
      refs.baseline = `${registry.host}/bench/numpy-oci:latest`;
      const oci = await buildOci(tmp, fixture);
      await run("skopeo", [
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        `oci:${oci}:latest`,
        `docker://${refs.baseline}`,
      ]);
      await rm(oci, { recursive: true, force: true });
    }
  }
}

/** A fresh home: pull + cold run, then the warm run. */
async function kindlingRound(
  tmp: string,
  round: string,
  ref: string,
  variant: ColdVariant,
  build: Build,
  registry: number,
): Promise<Row[]> {
  const root = path.join(tmp, `home-${round}`);
  await mkdir(root);
  const home = new KindlingHome(root);
  const env = {
    KINDLING_LAZY_FILE_READAHEAD: baseOf(variant).endsWith("files") ? "8388608" : "0",
    // -nostart: the pull does not start the image's lazy daemon (the run does, as before)
    KINDLING_PULL_START_DAEMON: baseOf(variant).endsWith("nostart") ? "0" : "1",
  };
  try {
    // A fresh worker: its service already runs (systemd, contrib/kindling.service), its image cache is empty.
    await kindling(root, ["info"], env, build);
    const t0 = now();
    // Each process of the pull and the cold run appends its steps here (src/util/trace.ts).
    const coldTrace = path.join(tmp, `trace-${round}-cold`);
    const warmTrace = path.join(tmp, `trace-${round}-warm`);
    const pull = await kindling(
      root,
      ["image", "pull", "--insecure", ref],
      { ...env, KINDLING_TRACE: coldTrace },
      build,
    );
    const pullMs = now() - t0;
    const regBefore = await cpuMs(registry);
    const cold = await kindling(root, runArgs(ref), { ...env, KINDLING_TRACE: coldTrace }, build);
    const registryCpu = (await cpuMs(registry)) - regBefore;
    const record = await loadImage(home, ref);
    if (!compressionOf(variant)) blockSize = record.blockSize;
    const index = await readBlockIndex(home, record.digest);
    let daemonCpu = 0;
    for (const pid of await liveDaemonPids(home, record.digest)) daemonCpu += await cpuMs(pid);
    const stats = await daemonStats(home, record.digest);
    // What came from the registry (verified): chunks, and startup ranges, which are not kept as chunks.
    const fetchedBytes = Math.max(await localBytes(home, index), stats?.bytesFetched ?? 0);
    const warm = await kindling(root, runArgs(ref), { ...env, KINDLING_TRACE: warmTrace }, build);
    if (!cold.out.trim() || cold.out !== warm.out)
      throw new Error(`unexpected output ${JSON.stringify(cold.out)}`);
    // Background fetches the cold run started may have gone on: what they added counts too.
    const after = await daemonStats(home, record.digest);
    const settledBytes = Math.max(fetchedBytes, await localBytes(home, index), after?.bytesFetched ?? 0);
    const rows: Row[] = [
      {
        variant,
        build,
        blockSize: record.blockSize,
        ms: pullMs + cold.ms,
        firstOutputMs: pullMs + cold.firstOutputMs,
        fetchedBytes,
        settledBytes,
        pullMs,
        daemon: stats
          ? viewOf(stats, cold.startedAt, { daemon: daemonCpu, registry: registryCpu })
          : undefined,
        phases: await phases(coldTrace, pull.startedAt + pull.ms),
      },
      {
        variant: "warm",
        build,
        of: variant,
        ms: warm.ms,
        firstOutputMs: warm.firstOutputMs,
        phases: await phases(warmTrace),
      },
    ];
    return rows;
  } finally {
    // The home's service made a bridge and rules for its namespace pool: they go with the home.
    await removeHomeNetwork(home).catch(() => {});
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
    await rm(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
  }
}

function report(rows: Row[], blockSize: number, loads: number[]): void {
  if (REGISTRY) console.log(`# images reused from ${REGISTRY} (no registry CPU)`);
  const pick = (v: Variant | "warm", of?: ColdVariant, build: Build = "this") =>
    rows.filter((r) => r.variant === v && (of === undefined || r.of === of) && (r.build ?? "this") === build);
  const med = (rs: Row[], f: (r: Row) => number | undefined) => median(rs.map((r) => f(r) ?? Number.NaN));
  const mb = (b: number) => `${(b / 1e6).toFixed(1)} MB`;
  const pct = (b: number, size = blockSize) => `${((100 * b) / size).toFixed(1)}%`;
  /** The block image size of a variant's image (another compression: another size). */
  const sizeOf = (v: ColdVariant) => med(pick(v), (r) => r.blockSize) || blockSize;
  const cli = process.env.KINDLING_BENCH_CLI ? `KINDLING_BENCH_CLI=${process.env.KINDLING_BENCH_CLI} ` : "";
  const baseline = BASELINE ? ` --baseline ${BASELINE}` : "";
  const py = args.get("py") ? ` --py ${JSON.stringify(args.get("py"))}` : "";
  console.log(
    `# ${cli}node dist/bench/coldstart.js --n ${N} --fixture ${FIXTURE} --variants ${VARIANTS.join(",")}${py}${baseline}`,
  );
  console.log(
    `# workload: python3 -c '${CMD[2]}' (kindling run --runtime runc --network none); load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}; ${N} interleaved rounds, medians; block image ${mb(blockSize)}`,
  );
  console.log("");
  console.log(
    "| variant | total ms | first output ms | pull ms | read by the run | fetched (run) | fetched (settled) | fetch rate | time to 1st chunk ms | readers blocked ms | slow reads | req ms/chunk | queued ms/chunk | file-ahead chunks | profile chunks | daemon CPU ms | registry CPU ms |",
  );
  console.log("|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  const base = pick("baseline");
  /** Each Kindling variant with each build (--baseline: "VARIANT (base)" rows with that build's CLI). */
  const colds = (VARIANTS.filter((v) => v !== "baseline") as ColdVariant[])
    .flatMap((v) => BUILDS.map((build) => ({ v, build, label: build === "base" ? `${v} (base)` : v })))
    .filter((c) => pick(c.v, undefined, c.build).length);
  for (const { v, build, label } of colds) {
    const rs = pick(v, undefined, build);
    const d = (f: (x: DaemonView) => number) => med(rs, (r) => (r.daemon ? f(r.daemon) : undefined));
    const fetched = med(rs, (r) => r.fetchedBytes);
    const settled = med(rs, (r) => r.settledBytes);
    const size = sizeOf(v);
    const runMs = med(rs, (r) => r.ms - (r.pullMs ?? 0));
    console.log(
      `| ${label} | ${med(rs, (r) => r.ms).toFixed(0)} | ${med(rs, (r) => r.firstOutputMs).toFixed(0)} | ${med(rs, (r) => r.pullMs).toFixed(0)} | ${mb(d((x) => x.servedBytes))} | ${mb(fetched)} (${pct(fetched, size)}) | ${mb(settled)} (${pct(settled, size)}) | ${mb((fetched / runMs) * 1000)}/s | ${d((x) => x.ttfbMs).toFixed(0)} | ${d((x) => x.blockedMs).toFixed(0)} | ${d((x) => x.slowReads).toFixed(0)} | ${d((x) => x.requestMs).toFixed(1)} | ${d((x) => x.queuedMs).toFixed(1)} | ${d((x) => x.fileChunks).toFixed(0)} | ${d((x) => x.profileChunks).toFixed(0)} | ${d((x) => x.daemonCpuMs).toFixed(0)} | ${d((x) => x.registryCpuMs).toFixed(0)} |`,
    );
    const w = pick("warm", v, build);
    console.log(
      `| warm (${label} home) | ${med(w, (r) => r.ms).toFixed(0)} | ${med(w, (r) => r.firstOutputMs).toFixed(0)} | - | - | - | - | - | - | - | - | - | - | - | - | - | - |`,
    );
  }
  if (base.length) {
    console.log(
      `| baseline (skopeo+umoci+runc) | ${med(base, (r) => r.ms).toFixed(0)} | ${med(base, (r) => r.firstOutputMs).toFixed(0)} | ${med(base, (r) => r.pullMs).toFixed(0)} | - | ${mb(blockSize)} image, whole layer | - | - | - | - | - | - | - | - | - | - | - |`,
    );
  }
  console.log("");
  for (const { v, build, label } of colds) {
    const cold = med(pick(v, undefined, build), (r) => r.ms);
    const warm = med(pick("warm", v, build), (r) => r.ms);
    const fetched = med(pick(v, undefined, build), (r) => r.settledBytes);
    const vsBase = base.length
      ? `, baseline/cold = ${(med(base, (r) => r.ms) / cold).toFixed(2)}x (target >= 5)`
      : "";
    console.log(
      `${label}: cold/warm = ${(cold / warm).toFixed(2)}x (target <= 2)${vsBase}, fetched ${pct(fetched, sizeOf(v))} (target <= 25%)`,
    );
  }
  const ph = (rs: Row[], f: (p: Phases) => number) => {
    const v = med(rs, (r) => (r.phases ? f(r.phases) : undefined));
    return Number.isNaN(v) ? "-" : v.toFixed(0);
  };
  if (BASELINE) {
    for (const v of new Set(colds.map((c) => c.v))) {
      const ratio = (f: (r: Row) => number, warmRows = false) => {
        const get = (b: Build) => med(warmRows ? pick("warm", v, b) : pick(v, undefined, b), f);
        return (get("this") / get("base")).toFixed(2);
      };
      console.log(
        `${v}: this build / --baseline: cold total ${ratio((r) => r.ms)}x, pull ${ratio((r) => r.pullMs ?? Number.NaN)}x, warm ${ratio((r) => r.ms, true)}x`,
      );
    }
  }
  for (const { v, build, label } of colds) {
    const rs = pick(v, undefined, build);
    const w = pick("warm", v, build);
    console.log(
      `phases ${label} (median ms, KINDLING_TRACE): pull CLI start ${ph(rs, (p) => p.pullLoadMs)}, pull's last step to its exit ${ph(rs, (p) => p.pullTailMs)}, lazy daemon module load ${ph(rs, (p) => p.daemonLoadMs)}, lazy daemon start ${ph(rs, (p) => p.daemonStartMs)}, run CLI start to create sent ${ph(rs, (p) => p.runCliMs)} (warm ${ph(w, (p) => p.runCliMs)}), run waits for the image ${ph(rs, (p) => p.imageWaitMs)} (warm ${ph(w, (p) => p.imageWaitMs)}), process to first output ${ph(rs, (p) => p.processMs)} (warm ${ph(w, (p) => p.processMs)})`,
    );
  }
  console.log(
    "fetched: bytes from the registry, verified (chunks, and startup ranges, which are not kept as chunks); fetch rate: fetched (run) / (total - pull); time to 1st chunk: run start -> first verified chunk; readers blocked: wall time with a read of the lazy file waiting; fetched (settled): after the warm run (background fetches the cold run started included)",
  );
  if (COMPRESSIONS.length) {
    const seen = new Map<string, string>();
    for (const { v } of colds) seen.set(compressionOf(v) ?? "default", mb(sizeOf(v)));
    console.log(
      `block images (import ms in the setup, one import each): ${[...seen].map(([c, size]) => `${c} ${size}, import ${(importMs.get(c) ?? Number.NaN).toFixed(0)}`).join("; ")}`,
    );
  }
  console.log(
    `per round: ${rows.map((r) => `${r.variant}${r.of ? `(${r.of})` : ""}${r.build === "base" ? "[base]" : ""}=${r.ms.toFixed(0)}`).join(" ")}`,
  );
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
