/**
 * Client start (not a test): `kindling ps -q` as a process, four ways, interleaved rounds, medians:
 *   node        `node -e 0`: the floor of any Node CLI
 *   shipped     bin/kindling: the thin entry as one esbuild bundle (dist/src/cli/entry.bundle.js)
 *   unbundled   the thin entry as tsc compiled it (dist/src/cli/entry.js, one module per file)
 *   snapshot    a V8 startup snapshot of the thin path (Node 20's `--build-snapshot`): the same code
 *               bundled as CommonJS, its heap serialized, run as `node --snapshot-blob BLOB ps -q`
 * The snapshot is built here, in a temp directory (it is tied to this exact node binary), and is not
 * what Kindling ships (README: the cost of what a user types). A home with an empty service.
 *   node dist/bench/cli-snapshot.js [--n 30]
 */
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { REPO } from "../src/bench/images.js";

const argOf = (name: string): string | undefined => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const N = Number(argOf("n") ?? 30);
const DIST_CLI = fileURLToPath(new URL("../src/cli/", import.meta.url));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

function run(args: string[], env: NodeJS.ProcessEnv): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, args, { env, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`node ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

const tmp = await mkdtemp(path.join(tmpdir(), "kindling-cli-snapshot-"));
const home = path.join(tmp, "home");
const env = { ...process.env, KINDLING_HOME: home, KINDLING_SOCKET: "" };
try {
  // The snapshot's entry: the thin path, called from the deserialized main with the user's args.
  const entry = path.join(tmp, "snapshot-entry.mjs");
  await writeFile(
    entry,
    `import v8 from "node:v8";
import { runThin } from ${JSON.stringify(path.join(DIST_CLI, "thin.js"))};
v8.startupSnapshot.setDeserializeMainFunction(() => void runThin(process.argv.slice(1)));
`,
  );
  const cjs = path.join(tmp, "snapshot.cjs");
  const esbuild = spawnSync(
    path.join(REPO, "node_modules", ".bin", "esbuild"),
    [
      entry,
      "--bundle",
      "--platform=node",
      "--format=cjs",
      "--log-level=error",
      // import.meta.url (the client's path to main.js, for starting a service) as in dist/
      `--define:import.meta.url=${JSON.stringify(`file://${path.join(DIST_CLI, "..", "client", "index.js")}`)}`,
      `--outfile=${cjs}`,
    ],
    { encoding: "utf8" },
  );
  if (esbuild.status !== 0) throw new Error(`esbuild: ${esbuild.stderr}`);
  const blob = path.join(tmp, "snapshot.blob");
  const built = spawnSync(process.execPath, ["--snapshot-blob", blob, "--build-snapshot", cjs], {
    encoding: "utf8",
  });
  if (built.status !== 0) throw new Error(`--build-snapshot: ${built.stderr}`);
  const variants: [string, string[]][] = [
    ["node", ["-e", "0"]],
    ["shipped", [path.join(REPO, "bin", "kindling"), "ps", "-q"]],
    ["unbundled", [path.join(DIST_CLI, "entry.js"), "ps", "-q"]],
    ["snapshot", ["--snapshot-blob", blob, "ps", "-q"]],
  ];
  for (const [, args] of variants) run(args, env); // warm-up: the service starts
  const times = new Map<string, number[]>(variants.map(([n]) => [n, []]));
  const load0 = loadavg()[0]!;
  for (let i = 0; i < N; i++) for (const [name, args] of variants) times.get(name)!.push(run(args, env));
  console.log(
    `\`kindling ps -q\` (no containers), median of ${N} interleaved rounds; load ${load0.toFixed(1)} -> ${loadavg()[0]!.toFixed(1)}; node ${process.version}`,
  );
  console.log(`command: node dist/bench/cli-snapshot.js ${process.argv.slice(2).join(" ")}`.trimEnd());
  console.log("| variant | ms | above node -e 0 |");
  console.log("|---|---:|---:|");
  const floor = median(times.get("node")!);
  for (const [name, v] of times) {
    console.log(`| ${name} | ${median(v).toFixed(1)} | ${(median(v) - floor).toFixed(1)} |`);
  }
} finally {
  const pid = Number((await readFile(path.join(home, "kindling.pid"), "utf8").catch(() => "")).trim());
  if (pid > 0) {
    try {
      process.kill(pid, "SIGTERM");
    } catch {
      // gone
    }
    for (let i = 0; i < 100; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  await rm(tmp, { recursive: true, force: true });
}
