/**
 * The cost of what a user types (not a test): `kindling run --runtime runc` of a warm image against
 * `runc run` of the same image in a plain directory, end to end as processes, interleaved rounds,
 * medians and ratios. Since `kindling run` runs every container under the service (an attached run
 * streams from the container's supervisor), the variants measure what each technique buys:
 *   runc          runc run, the image's tree unpacked in a plain directory (the baseline)
 *   node          `node -e 0`: the floor any Node CLI pays
 *   kindling      `kindling run` as shipped: thin entry (src/cli/thin.ts) as one esbuild bundle (bin/kindling
 *                 loads dist/src/cli/entry.bundle.js, made by `npm run build`), the service, a spare supervisor
 *   full-entry    the same run through main.ts (commander and the run command's modules loaded)
 *   no-spare      `kindling run` in a home whose service starts a supervisor per container
 *                 (KINDLING_SERVICE_SPARE_SUPERVISOR=0): Node's start and module loading on the path
 *   in-process    the path before the service: one Node process parses, prepares, runs and releases
 *                 (src/runtime/lifecycle.ts runContainer, as `kindling run` did until now)
 *   unbundled     the same thin entry as tsc compiled it (dist/src/cli/entry.js: one module per file)
 *   tty           `kindling run -t` (as shipped): the process on a pseudo-terminal (runc runs on a host
 *                 pty from node-pty and relays the container's own; the output is the terminal's)
 * Then the phases of a service run, timed by the client library inside this process (no Node start):
 * create (the API call), attach, attach to first output, first output to the end (the release included).
 * V8's compile cache (module.enableCompileCache, NODE_COMPILE_CACHE) exists from Node 22.1; on an
 * older Node the script says so and skips it.
 * Warm: the image was imported and run once in each home; its lazy daemon (and SquashFS mount) stays
 * up (the service keeps it; KINDLING_LAZY_IDLE_MS=600000), so every measured run reads cached chunks,
 * and each home's service runs already.
 * Both sides run `echo hi` with no network (kindling: --network none; runc: an empty netns).
 * --trace M: after the rounds, M more `kindling run`s with KINDLING_TRACE (src/util/trace.ts): every
 * process of the run (CLI, service, supervisor) timestamps its steps into one file per run, and the
 * script prints each step's median time since the one before it (where the time goes, end to end).
 * --variants a,b,...: only these variants (runc is always measured: it is the baseline).
 * --baseline DIR: one more variant, `baseline`: `kindling run` of another build (a checkout of an
 * earlier commit at DIR, built) in a home of its own whose service is that build's: a change
 * against the code before it, in one interleaved run.
 *   node dist/bench/cli-cost.js [--n 15] [--trace M] [--variants kindling,node] [--baseline DIR]
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { benchArgs } from "../src/bench/args.js";
import { REPO } from "../src/bench/images.js";
import { importImage } from "../src/image/import.js";
import { stopIdleShared } from "../src/lazy/index.js";
import { resolveImage } from "../src/runtime/image.js";
import { buildOciSpec } from "../src/runtime/oci.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";

const args = benchArgs(
  "node dist/bench/cli-cost.js [--n 15] [--trace M] [--variants kindling,node] [--baseline DIR]",
  { options: ["n", "trace", "variants", "baseline"] },
);
const N = args.num("n", 15);
const TRACE_RUNS = args.num("trace", 0);
const ONLY = args.list("variants");
const BASELINE = args.get("baseline");
const DIST_CLI = fileURLToPath(new URL("../src/cli/", import.meta.url));

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Runs a command to its end; resolves with wall ms and stdout. */
function timed(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ ms: number; out: string }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      err += d;
    });
    child.on("error", reject);
    child.on("close", (code) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (code !== 0) reject(new Error(`${cmd} ${args.join(" ")} exited ${code}: ${err}`));
      else resolve({ ms, out });
    });
  });
}

/** The path before the service, as a script: `kindling run` in one process (for the in-process row). */
const IN_PROCESS = `
import { configure } from "../config/index.js";
import { resolveImage } from "../runtime/image.js";
import { runContainer } from "../runtime/lifecycle.js";
import { parseRunOptions } from "../runtime/options.js";
import { runtimeFor } from "../runtime/runtimes.js";
import { KindlingHome } from "../util/home.js";
const [image, ...command] = process.argv.slice(2);
const cfg = configure(process.env, { runtime: "runc" });
const home = new KindlingHome(cfg.home);
const options = await parseRunOptions(image, command, { runtime: "runc", network: "none" }, process.env);
const handle = runContainer({ home, options, image: await resolveImage(home, image), runtime: await runtimeFor(options) });
process.exitCode = (await handle.result).status;
`;

/** Stops the service a CLI started for `home` (its pid file), bounded. */
async function stopService(home: KindlingHome): Promise<void> {
  const pid = Number((await readFile(path.join(home.root, "kindling.pid"), "utf8").catch(() => "")).trim());
  if (!(pid > 0)) return;
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    return;
  }
  for (let i = 0; i < 300; i++) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * One traced run's steps in time order, each as the time since the step before it (ms). Steps
 * are named by their text without the pid ("cli: first output"); t0 = the CLI's process start.
 */
async function tracedSteps(file: string): Promise<[string, number][]> {
  const lines = (await readFile(file, "utf8"))
    .trim()
    .split("\n")
    .map((l) => {
      const [t, , ...step] = l.split(" ");
      // one name per step across runs: no ids, digests or paths
      const name = step
        .join(" ")
        .replace(/ \(sha256:[0-9a-f]+\)/g, "")
        .replace(/\/\S*\/run\/[0-9a-f]{12}/g, "RUNDIR")
        .replace(/[0-9a-f]{12}/g, "ID");
      return { t: Number(t), step: name };
    })
    .sort((a, b) => a.t - b.t);
  const out: [string, number][] = [];
  for (let i = 1; i < lines.length; i++) out.push([lines[i]!.step, lines[i]!.t - lines[i - 1]!.t]);
  return out;
}

/** The phases of one attached run under the service, from the client library (ms). */
async function phases(home: KindlingHome): Promise<Record<string, number>> {
  const { Kindling } = await import("../src/client/index.js");
  const k = new Kindling({ home: home.root, autoStart: true });
  const t0 = performance.now();
  const created = await k.createContainer({
    image: "bb",
    command: ["echo", "hi"],
    runtime: "runc",
    network: "none",
    attach: true,
    autoRemove: true,
    environment: { KINDLING_HOME: home.root, KINDLING_LAZY_IDLE_MS: "600000" },
  });
  const t1 = performance.now();
  let first = 0;
  const out = new Writable({
    write(_c, _e, cb) {
      first ||= performance.now();
      cb();
    },
  });
  const session = await k.attach(created.id, { stdout: out, stderr: out }, { direct: true });
  const t2 = performance.now();
  await session.exit;
  const t3 = performance.now();
  return { create: t1 - t0, attach: t2 - t1, "to first output": first - t2, "to the end": t3 - first };
}

async function main(): Promise<void> {
  const tmp = await mkdtemp(path.join(tmpdir(), "kindling-cli-cost-"));
  const home = new KindlingHome(path.join(tmp, "home")).ensure();
  const noSpareHome = new KindlingHome(path.join(tmp, "home-no-spare")).ensure();
  const env = {
    ...process.env,
    KINDLING_HOME: home.root,
    KINDLING_LAZY_IDLE_MS: "600000",
    KINDLING_SOCKET: "",
  };
  const noSpareEnv = { ...env, KINDLING_HOME: noSpareHome.root, KINDLING_SERVICE_SPARE_SUPERVISOR: "0" };
  const baselineHome = new KindlingHome(path.join(tmp, "home-baseline")).ensure();
  const baselineEnv = { ...env, KINDLING_HOME: baselineHome.root };
  const inProcessEntry = path.join(DIST_CLI, "run-in-process.bench.js");
  try {
    const rootfsTar = path.join(REPO, ".cache", "fixtures", "busybox-rootfs.tar");
    await importImage(home, rootfsTar, { name: "bb" });
    await importImage(noSpareHome, rootfsTar, { name: "bb" });
    if (BASELINE) await importImage(baselineHome, rootfsTar, { name: "bb" });
    // The same tree as a plain directory, and a runc bundle running `echo hi` in it.
    const image = await resolveImage(home, "bb");
    const file = await image.blockImage.open();
    const plain = path.join(tmp, "plain");
    try {
      await exec("unsquashfs", ["-q", "-n", "-d", plain, file.path]);
    } finally {
      await file.close();
    }
    const bundle = path.join(tmp, "bundle");
    await mkdir(bundle);
    const proc = {
      args: ["echo", "hi"],
      env: ["PATH=/bin"],
      cwd: "/",
      uid: 0,
      gid: 0,
      additionalGids: [],
    };
    await writeFile(
      path.join(bundle, "config.json"),
      JSON.stringify(
        buildOciSpec({ process: proc, hostname: "b", rootfs: plain, volumes: [], nofile: 1024 }),
      ),
    );
    await writeFile(inProcessEntry, IN_PROCESS);
    const kindling = path.join(REPO, "bin", "kindling");
    const runFlags = ["--rm", "--runtime", "runc", "--network", "none", "bb", "--", "echo", "hi"];
    const runArgs = ["run", ...runFlags];
    const variants: [string, () => Promise<{ ms: number; out: string }>][] = [
      [
        "runc",
        () =>
          timed(
            "runc",
            [
              "--root",
              path.join(tmp, "state"),
              "run",
              "--bundle",
              bundle,
              `c${Math.random().toString(36).slice(2, 10)}`,
            ],
            env,
          ),
      ],
      ["node", () => timed(process.execPath, ["-e", "0"], env)],
      ["kindling", () => timed(process.execPath, [kindling, ...runArgs], env)],
      ["full-entry", () => timed(process.execPath, [path.join(DIST_CLI, "main.js"), ...runArgs], env)],
      ["no-spare", () => timed(process.execPath, [kindling, ...runArgs], noSpareEnv)],
      ["in-process", () => timed(process.execPath, [inProcessEntry, "bb", "echo", "hi"], env)],
    ];
    variants.push([
      "unbundled",
      () => timed(process.execPath, [path.join(DIST_CLI, "entry.js"), ...runArgs], env),
    ]);
    variants.push(["tty", () => timed(process.execPath, [kindling, "run", "-t", ...runFlags], env)]);
    const { enableCompileCache } = (await import("node:module")) as { enableCompileCache?: unknown };
    const compileCache = typeof enableCompileCache === "function";
    if (compileCache) {
      const cacheEnv = { ...env, NODE_COMPILE_CACHE: path.join(tmp, "v8-cache") };
      variants.push(["compile-cache", () => timed(process.execPath, [kindling, ...runArgs], cacheEnv)]);
    }
    if (BASELINE) {
      const other = path.resolve(BASELINE, "bin", "kindling");
      variants.push(["baseline", () => timed(process.execPath, [other, ...runArgs], baselineEnv)]);
    }
    if (ONLY) {
      for (let i = variants.length - 1; i >= 0; i--)
        // runc is the unit of every ratio; --baseline DIR asks for the baseline whatever --variants says
        if (!["runc", ...(BASELINE ? ["baseline"] : []), ...ONLY].includes(variants[i]![0]))
          variants.splice(i, 1);
    }
    // Warm-up: the services start, the lazy daemons start, chunks are cached, every variant runs once.
    for (const [name, run] of variants) {
      const r = await run();
      if (name !== "node" && r.out !== (name === "tty" ? "hi\r\n" : "hi\n"))
        throw new Error(`${name}: unexpected output ${JSON.stringify(r.out)}`);
    }
    const times = new Map<string, number[]>(variants.map(([n]) => [n, []]));
    const phaseTimes = new Map<string, number[]>();
    const load0 = loadavg()[0]!;
    for (let i = 0; i < N; i++) {
      for (const [name, run] of variants) times.get(name)!.push((await run()).ms);
      for (const [k, v] of Object.entries(await phases(home)))
        phaseTimes.set(k, [...(phaseTimes.get(k) ?? []), v]);
    }
    const base = median(times.get("runc")!);
    console.log(
      `\`echo hi\`, warm busybox image, median of ${N} interleaved rounds; load ${load0.toFixed(1)} -> ${loadavg()[0]!.toFixed(1)}; node ${process.version}`,
    );
    console.log(`command: node dist/bench/cli-cost.js ${process.argv.slice(2).join(" ")}`.trimEnd());
    console.log("| variant | ms | vs runc run |");
    console.log("|---|---:|---:|");
    for (const [name] of variants) {
      const m = median(times.get(name)!);
      console.log(`| ${name} | ${m.toFixed(1)} | ${(m / base).toFixed(2)}x |`);
    }
    if (!compileCache)
      console.log(
        `compile-cache: not measured (module.enableCompileCache needs Node >= 22.1; this is ${process.version})`,
      );
    console.log("\nphases of a run under the service (client library in this process, no Node start):");
    console.log("| phase | median ms |");
    console.log("|---|---:|");
    for (const [k, v] of phaseTimes) console.log(`| ${k} | ${median(v).toFixed(1)} |`);
    if (TRACE_RUNS > 0) {
      // Step by step: the same `kindling run`, each with its own trace file (after the rounds, so
      // the tracing's own cost is not in the table above).
      const steps = new Map<string, number[]>();
      const totals: number[] = [];
      for (let i = 0; i < TRACE_RUNS; i++) {
        const file = path.join(tmp, `trace-${i}.txt`);
        await timed(process.execPath, [kindling, ...runArgs], { ...env, KINDLING_TRACE: file });
        const run = await tracedSteps(file);
        totals.push(run.reduce((a, [, ms]) => a + ms, 0));
        for (const [step, ms] of run) steps.set(step, [...(steps.get(step) ?? []), ms]);
      }
      console.log(
        `\nwhere a traced \`kindling run\` spends its time (KINDLING_TRACE, median of ${TRACE_RUNS} runs; each step: ms since the step before it, in any process):`,
      );
      console.log("| step (process: what just happened) | ms |");
      console.log("|---|---:|");
      for (const [step, v] of steps) console.log(`| ${step} | ${median(v).toFixed(1)} |`);
      console.log(`| total (process start to exit) | ${median(totals).toFixed(1)} |`);
    }
  } finally {
    await rm(inProcessEntry, { force: true });
    await stopService(home);
    await stopService(noSpareHome);
    await stopService(baselineHome);
    await stopIdleShared(home).catch(() => 0);
    await stopIdleShared(noSpareHome).catch(() => 0);
    await stopIdleShared(baselineHome).catch(() => 0);
    await exec("runc", ["--root", path.join(tmp, "state"), "list", "-q"], { allowFailure: true });
    await rm(tmp, { recursive: true, force: true });
  }
}

await main();
