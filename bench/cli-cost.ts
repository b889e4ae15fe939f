/**
 * The cost of what a user types (not a test): `kindling run --runtime runc` of a warm image against
 * `runc run` of the same image in a plain directory, end to end as processes, interleaved rounds,
 * medians and ratios. Variants of kindling's entry point are measured in the same run:
 *   runc          runc run, the image's tree unpacked in a plain directory (the baseline)
 *   node          `node -e 0`: the floor any Node CLI pays
 *   load          `kindling run --help`: Node + loading the run command's modules, no work
 *   kindling      `kindling run` as shipped (each command's modules load only when it runs)
 *   eager         `kindling run` with every command's modules loaded first (the entry before that change)
 *   bundle        `kindling run` from one esbuild bundle of dist/src/cli/main.js (npm packages inlined)
 * V8's compile cache (module.enableCompileCache, NODE_COMPILE_CACHE) exists from Node 22.1; on an
 * older Node the script says so and skips it.
 * Warm: the image was imported and run once in the bench's home; its lazy daemon (and SquashFS
 * mount) stays up (KINDLING_LAZY_IDLE_MS=600000), so every measured run reads cached chunks.
 * Both sides run `echo hi` with no network (kindling: --network none; runc: an empty netns).
 *   node dist/bench/cli-cost.js [--n 15] [--no-bundle]
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { REPO } from "../src/bench/images.js";
import { importImage } from "../src/image/import.js";
import { stopIdleShared } from "../src/lazy/index.js";
import { resolveImage } from "../src/runtime/image.js";
import { buildOciSpec } from "../src/runtime/oci.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";

const argOf = (name: string): string | undefined => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const N = Number(argOf("n") ?? 15);
const BUNDLE = !process.argv.includes("--no-bundle");
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

async function main(): Promise<void> {
  const tmp = await mkdtemp(path.join(tmpdir(), "kindling-cli-cost-"));
  const home = new KindlingHome(path.join(tmp, "home")).ensure();
  const env = {
    ...process.env,
    KINDLING_HOME: home.root,
    KINDLING_LAZY_IDLE_MS: "600000",
    KINDLING_SOCKET: "",
  };
  const eagerEntry = path.join(DIST_CLI, "main-eager.bench.js");
  const bundleEntry = path.join(DIST_CLI, "main.bundle.bench.js");
  try {
    await importImage(home, path.join(REPO, ".cache", "fixtures", "busybox-rootfs.tar"), { name: "bb" });
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
    // The entry before lazy command loading: every command module first, then main.
    const modules = [
      "image",
      "run",
      "containers",
      "daemon",
      "doctor",
      "config",
      "bench",
      "login",
      "completion",
    ];
    await writeFile(
      eagerEntry,
      `${modules.map((m) => `await import("./${m}.js");`).join("\n")}\nawait import("./main.js");\n`,
    );
    if (BUNDLE) {
      await exec(path.join(REPO, "node_modules", ".bin", "esbuild"), [
        path.join(DIST_CLI, "main.js"),
        "--bundle",
        "--platform=node",
        "--format=esm",
        "--log-level=error",
        "--external:fuse-native",
        // CommonJS packages inlined into ESM need a require
        "--banner:js=import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);",
        `--outfile=${bundleEntry}`,
      ]);
    }
    const kindling = path.join(REPO, "bin", "kindling");
    const runArgs = ["run", "--runtime", "runc", "--network", "none", "bb", "--", "echo", "hi"];
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
      ["load", () => timed(process.execPath, [kindling, "run", "--help"], env)],
      ["kindling", () => timed(process.execPath, [kindling, ...runArgs], env)],
      ["eager", () => timed(process.execPath, [eagerEntry, ...runArgs], env)],
    ];
    if (BUNDLE) variants.push(["bundle", () => timed(process.execPath, [bundleEntry, ...runArgs], env)]);
    const { enableCompileCache } = (await import("node:module")) as { enableCompileCache?: unknown };
    const compileCache = typeof enableCompileCache === "function";
    if (compileCache) {
      const cacheEnv = { ...env, NODE_COMPILE_CACHE: path.join(tmp, "v8-cache") };
      variants.push(["compile-cache", () => timed(process.execPath, [kindling, ...runArgs], cacheEnv)]);
    }
    // Warm-up: the lazy daemon starts, chunks are cached, every variant runs once.
    for (const [name, run] of variants) {
      const r = await run();
      if (name !== "node" && name !== "load" && r.out !== "hi\n")
        throw new Error(`${name}: unexpected output ${JSON.stringify(r.out)}`);
    }
    const times = new Map<string, number[]>(variants.map(([n]) => [n, []]));
    const load0 = loadavg()[0]!;
    for (let i = 0; i < N; i++) {
      for (const [name, run] of variants) times.get(name)!.push((await run()).ms);
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
    void readFile;
  } finally {
    await rm(eagerEntry, { force: true });
    await rm(bundleEntry, { force: true });
    await stopIdleShared(home).catch(() => 0);
    await exec("runc", ["--root", path.join(tmp, "state"), "list", "-q"], { allowFailure: true });
    await rm(tmp, { recursive: true, force: true });
  }
}

await main();
