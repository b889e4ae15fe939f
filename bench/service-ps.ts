/**
 * `ps` with many containers (not a test): starts N runc containers (`sleep`) under a real service,
 * then measures GET /v1/containers (the API, in process; the service answers from its cached listing)
 * and `kindling ps -q` (the CLI, a process: the thin entry; the full CLI and `node -e 0` beside it)
 * while they all run: medians of R rounds, interleaved. Everything is removed afterwards.
 * --baseline DIR: also `DIR/bin/kindling ps -q`, the CLI of another build (a checkout of an earlier
 * commit, built) against the same service: a change to the client side, in one interleaved run.
 *   node dist/bench/service-ps.js [--n 50] [--rounds 20] [--baseline DIR]
 */
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { benchArgs } from "../src/bench/args.js";
import { REPO } from "../src/bench/images.js";
import { Kindling } from "../src/client/index.js";
import { jsonRequest } from "../src/service/unixhttp.js";
import { buildBusyboxTree, makeSquashfs } from "../test/helpers/images.js";

const args = benchArgs("node dist/bench/service-ps.js [--n 50] [--rounds 20] [--baseline DIR]", {
  options: ["n", "rounds", "baseline"],
});
const N = args.num("n", 50);
const ROUNDS = args.num("rounds", 20);
const BASELINE = args.get("baseline");
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

/** `kindling ps -q` as a process (`entry`: bin/kindling, the thin path; or another script). */
function timedCli(home: string, args = [path.join(REPO, "bin", "kindling"), "ps", "-q"]): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const c = spawn(process.execPath, args, {
      env: { ...process.env, KINDLING_HOME: home, KINDLING_SOCKET: "" },
      stdio: ["ignore", "ignore", "inherit"],
    });
    c.on("error", reject);
    c.on("close", (code) =>
      code === 0 ? resolve(Number(process.hrtime.bigint() - t0) / 1e6) : reject(new Error(`ps ${code}`)),
    );
  });
}

async function main(): Promise<void> {
  const tmp = await mkdtemp(path.join(tmpdir(), "kindling-ps-"));
  const home = path.join(tmp, "home");
  await buildBusyboxTree(path.join(tmp, "tree"));
  const image = path.join(tmp, "bb.sqfs");
  await makeSquashfs(path.join(tmp, "tree"), image);
  const k = new Kindling({ home, autoStart: true, idleExitSeconds: 30 });
  const ids: string[] = [];
  try {
    const t0 = Date.now();
    // Two at a time: the 2-core host starts a Node supervisor per container.
    for (let i = 0; i < N; i += 2) {
      const batch = [i, i + 1].filter((j) => j < N);
      const made = await Promise.all(
        batch.map((j) =>
          k.createContainer({
            image,
            runtime: "runc",
            network: "none",
            name: `s${j}`,
            command: ["sleep", "3600"],
          }),
        ),
      );
      ids.push(...made.map((m) => m.id));
    }
    const startS = (Date.now() - t0) / 1000;
    const running = (await k.listContainers()).length;
    const api: number[] = [];
    const cli: number[] = [];
    const full: number[] = [];
    const node: number[] = [];
    const baseline: number[] = [];
    const mainJs = path.join(REPO, "dist", "src", "cli", "main.js");
    for (let r = 0; r < ROUNDS; r++) {
      const a0 = process.hrtime.bigint();
      await jsonRequest(k.socket, "GET", "/v1/containers");
      api.push(Number(process.hrtime.bigint() - a0) / 1e6);
      cli.push(await timedCli(home));
      full.push(await timedCli(home, [mainJs, "ps", "-q"]));
      node.push(await timedCli(home, ["-e", "0"]));
      if (BASELINE)
        baseline.push(await timedCli(home, [path.resolve(BASELINE, "bin", "kindling"), "ps", "-q"]));
      await sleep(20);
    }
    console.log(
      `${running} runc containers running (started in ${startS.toFixed(1)} s); load ${loadavg()[0]!.toFixed(1)}; median of ${ROUNDS}`,
    );
    console.log(`command: node dist/bench/service-ps.js ${process.argv.slice(2).join(" ")}`.trimEnd());
    console.log(`| what | ms |`);
    console.log(`|---|---:|`);
    console.log(`| GET /v1/containers (API) | ${median(api).toFixed(1)} |`);
    console.log(`| kindling ps -q (CLI process, thin entry) | ${median(cli).toFixed(1)} |`);
    console.log(
      `| node dist/src/cli/main.js ps -q (the full CLI: commander, every module of ps) | ${median(full).toFixed(1)} |`,
    );
    console.log(`| node -e 0 (Node's own start, the floor of any Node CLI) | ${median(node).toFixed(1)} |`);
    if (BASELINE)
      console.log(
        `| ${BASELINE}/bin/kindling ps -q (the baseline build's CLI) | ${median(baseline).toFixed(1)} |`,
      );
  } finally {
    for (const id of ids) await k.remove(id, { force: true }).catch(() => {});
    const info = await k.info().catch(() => undefined);
    if (info) process.kill(info.daemon.pid, "SIGTERM");
    await sleep(500);
    await rm(tmp, { recursive: true, force: true });
  }
}

await main();
