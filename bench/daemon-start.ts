/**
 * The lazy daemon's start: CPU time (user + system) its process spends from exec to waiting for
 * its directory (an early start, `--await-dir`: Node's start and the daemon's module load), with the
 * compiled modules and with the esbuild bundle (package.json `bundle-daemon`), alternating.
 *   node dist/bench/daemon-start.js [--n 8]
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { loadavg } from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { benchArgs } from "../src/bench/args.js";
import { REPO } from "../src/bench/images.js";
import { AWAIT_DIR } from "../src/lazy/types.js";

const args = benchArgs("node dist/bench/daemon-start.js [--n 8]", { options: ["n"] });
const N = args.num("n", 8);
const ENTRIES = {
  modules: path.join(REPO, "dist", "src", "lazy", "daemon.js"),
  bundle: path.join(REPO, "dist", "src", "lazy", "daemon.bundle.js"),
};
if (!existsSync(ENTRIES.bundle)) throw new Error(`${ENTRIES.bundle} is missing: npm run build`);

/** CPU ms (user + system) of a process so far. */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
}

/** One early start: spawned, given 1.5 s to load and wait (bounded), its CPU read, then ended. */
async function once(entry: string): Promise<number> {
  const child = spawn(process.execPath, [entry, AWAIT_DIR, "/nonexistent/kindling-bench"], {
    stdio: ["ignore", "ignore", "inherit", "ipc"],
    serialization: "advanced",
  });
  try {
    await sleep(1500);
    return cpuMs(child.pid!);
  } finally {
    // Its channel closed with no directory made: it exits by itself; SIGKILL if not within 5 s.
    child.disconnect();
    const gone = new Promise((r) => child.once("exit", r));
    if (!(await Promise.race([gone.then(() => true), sleep(5000).then(() => false)]))) child.kill("SIGKILL");
  }
}

const ms: Record<keyof typeof ENTRIES, number[]> = { modules: [], bundle: [] };
const loads: number[] = [];
for (let i = 0; i < N; i++) {
  for (const k of i % 2 ? (["modules", "bundle"] as const) : (["bundle", "modules"] as const)) {
    loads.push(loadavg()[0]);
    ms[k].push(await once(ENTRIES[k]));
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
console.log(
  `# node dist/bench/daemon-start.js --n ${N}; load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}; CPU ms (user+sys) from exec to waiting, median of ${N} alternating starts`,
);
console.log(`compiled modules: ${median(ms.modules)} ms (${ms.modules.join(", ")})`);
console.log(
  `bundle: ${median(ms.bundle)} ms (${ms.bundle.join(", ")}); bundle / modules = ${(median(ms.bundle) / median(ms.modules)).toFixed(2)}x`,
);
