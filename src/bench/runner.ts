/**
 * Runs the plan: publishes the images to a registry on 127.0.0.1, then repeats every unit --reps
 * times, round-robin (the unit order rotates each repetition, so drift and neighbours' load spread
 * over all variants), and reduces each variant to its median row.
 */
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseRunOptions } from "../runtime/options.js";
import { getRuntime } from "../runtime/runtimes.js";
import type { RootfsStrategy, Runtime } from "../runtime/types.js";
import { errorMessage } from "../util/errors.js";
import { KindlingHome } from "../util/home.js";
import { Scope } from "../util/scope.js";
import { makeBindMounts } from "./binds.js";
import { DirRuntime } from "./dir-runtime.js";
import { coldHome, releaseHome, sharedKernelDir } from "./homes.js";
import { IMAGES, publishImage, unpackTree } from "./images.js";
import { measureRun } from "./measure.js";
import { benchNetwork, NETWORK_KEY, type NetworkRow } from "./network.js";
import { type Cache, planUnits, type Strategy, strategyName, type Unit, unavailableReason } from "./plan.js";
import { startBenchRegistry } from "./registry.js";
import { type BenchRow, medianRow, variantKey } from "./rows.js";

/** The command every run executes: a shell that prints one line (the first output). */
export const BENCH_COMMAND = ["/bin/sh", "-c", "echo kindling-bench-ready"];
const EXPECT = "kindling-bench-ready";
/** Smallest first (for picking the cheapest warm-up). */
const IMAGE_ORDER = ["busybox", "small", "large"];

export interface BenchOptions {
  quick: boolean;
  reps: number;
  filters: RegExp[];
  /** Where the bench's homes, registry and bind-mount sources live (default /var/tmp). */
  workDir?: string;
  /** Progress lines (stderr by default). */
  log?: (line: string) => void;
  /** One unrecorded run per strategy before the repetitions (default true). */
  warmup?: boolean;
  /** A run taking longer fails (default 15 min: a cold SquashFS build of the large image is slow). */
  runTimeoutMs?: number;
}

export interface Skipped {
  what: string;
  reason: string;
}

export interface BenchResult {
  /** One median row per variant, in plan order. */
  rows: BenchRow[];
  /** What --network bridge adds to a runc run's start (network.ts); absent when filtered out. */
  network?: NetworkRow;
  /** Every single run. */
  runs: BenchRow[];
  skipped: Skipped[];
}

export async function runBench(opts: BenchOptions): Promise<BenchResult> {
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const skipped: Skipped[] = [];
  let units = planUnits(opts);

  // Strategies this host cannot run are skipped with the runtime's own reason.
  const reasons = new Map<string, string | undefined>();
  for (const u of units) {
    const name = strategyName(u.strategy);
    if (!reasons.has(name)) reasons.set(name, await unavailableReason(u.strategy));
  }
  for (const [name, reason] of reasons) if (reason) skipped.push({ what: name, reason });
  units = units.filter((u) => !reasons.get(strategyName(u.strategy)));

  const runs: BenchRow[] = [];
  log(
    `bench: load average ${os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(" / ")} at the start`,
  );
  const work = await mkdtemp(path.join(opts.workDir ?? "/var/tmp", "kindling-bench-"));
  try {
    await Scope.with(async (scope) => {
      scope.defer(`bench dir ${work}`, () => rm(work, { recursive: true, force: true }));
      if (units.length === 0) return;
      const registry = await startBenchRegistry(work);
      scope.defer("bench registry", () => registry.stop());

      // Publish the images the plan needs; a plain-directory baseline also needs the tree.
      const source = new KindlingHome(path.join(work, "source")).ensure();
      scope.defer("source home", () => releaseHome(source));
      const refs = new Map<string, string>();
      const trees = new Map<string, string>();
      for (const name of new Set(units.map((u) => u.image))) {
        log(`bench: publishing image ${name} (${IMAGES[name]!.description})`);
        refs.set(name, await publishImage(source, IMAGES[name]!, registry.host));
        if (units.some((u) => u.image === name && u.strategy.rootfs === "dir")) {
          trees.set(name, await unpackTree(source, IMAGES[name]!, path.join(work, `tree-${name}`)));
        }
      }
      const binds = new Map<number, Awaited<ReturnType<typeof makeBindMounts>>>();
      for (const n of new Set(units.map((u) => u.bindMounts))) binds.set(n, await makeBindMounts(work, n));

      const kernelDir = await sharedKernelDir(work);
      // A unit that failed twice is given up (a first failure may be passing: a daemon, a VM boot).
      const failed = new Map<Unit, number>();
      const fail = (unit: Unit, err: unknown, phase: string) => {
        const n = (failed.get(unit) ?? 0) + 1;
        failed.set(unit, n);
        const what = `${strategyName(unit.strategy)} ${unit.image} ${unit.bindMounts} mounts`;
        skipped.push({
          what,
          reason: `${phase} failed${n >= 2 ? " twice, given up" : ""}: ${errorMessage(err)}`,
        });
        log(`bench: ${what}: ${phase} failed: ${errorMessage(err)}`);
      };
      const ctxOf = (unit: Unit): UnitContext => ({
        work,
        ref: refs.get(unit.image)!,
        kernelDir,
        tree: trees.get(unit.image),
        volumes: binds.get(unit.bindMounts)!,
        timeoutMs: opts.runTimeoutMs ?? 15 * 60_000,
      });
      // One unrecorded run per strategy first (its cheapest unit): page cache, binaries, and a VM
      // runtime's guest kernel (fetched into home.kernel on first use) are then warm for everyone.
      const order = (u: Unit) => IMAGE_ORDER.indexOf(u.image) * 1000 + u.bindMounts;
      const warmups = opts.warmup === false ? [] : units;
      for (const name of new Set(warmups.map((u) => strategyName(u.strategy)))) {
        const unit = units
          .filter((u) => strategyName(u.strategy) === name)
          .sort((a, b) => order(a) - order(b))[0]!;
        log(`bench: warm-up ${name} ${unit.image}`);
        await runUnit(unit, ctxOf(unit)).catch((err) => fail(unit, err, "warm-up"));
      }
      for (let rep = 0; rep < opts.reps; rep++) {
        const order = units.map((_, i) => units[(i + rep) % units.length]!);
        for (const unit of order) {
          if ((failed.get(unit) ?? 0) >= 2) continue;
          try {
            const rows = await runUnit(unit, ctxOf(unit));
            for (const r of rows) {
              log(
                `bench: [${rep + 1}/${opts.reps}] ${variantKey(r)}: prep ${r.prepMs.toFixed(1)} ms, ` +
                  `first output ${r.firstOutputMs.toFixed(0)} ms, total ${r.totalMs.toFixed(0)} ms, ` +
                  `fetched ${r.fetchedBytes} B, disk ${r.diskBytes} B`,
              );
            }
            runs.push(...rows);
          } catch (err) {
            fail(unit, err, `repetition ${rep + 1}`);
          }
        }
      }
    });
  } finally {
    await rm(work, { recursive: true, force: true }).catch(() => {});
  }
  let network: NetworkRow | undefined;
  if (opts.filters.length === 0 || opts.filters.some((f) => f.test(NETWORK_KEY))) {
    log("bench: network (host side)");
    network = await benchNetwork(opts.workDir ?? "/var/tmp", Math.max(5, opts.reps)).catch((err) => {
      skipped.push({ what: NETWORK_KEY, reason: errorMessage(err) });
      return undefined;
    });
  }

  // Medians per variant, in plan order.
  const byKey = new Map<string, BenchRow[]>();
  for (const r of runs) byKey.set(variantKey(r), [...(byKey.get(variantKey(r)) ?? []), r]);
  const rows: BenchRow[] = [];
  for (const u of units) {
    for (const cache of u.record) {
      const key = variantKey({ ...u.strategy, image: u.image, bindMounts: u.bindMounts, cache });
      const group = byKey.get(key);
      if (group) rows.push(medianRow(group));
    }
  }
  return { rows, runs, skipped, ...(network ? { network } : {}) };
}

interface UnitContext {
  work: string;
  ref: string;
  kernelDir: string;
  tree?: string;
  volumes: Awaited<ReturnType<typeof makeBindMounts>>;
  timeoutMs: number;
}

/** One repetition of a unit: fresh home, cold run, warm run; the home is released on every path. */
async function runUnit(unit: Unit, ctx: UnitContext): Promise<BenchRow[]> {
  const home = await coldHome(ctx.work, ctx.ref, ctx.kernelDir);
  try {
    const runtime = makeRuntime(unit.strategy, ctx.tree);
    await runtime.checkHost();
    const options = await parseRunOptions(ctx.ref, BENCH_COMMAND.slice(1), {
      runtime: unit.strategy.runtime,
      rootfs: unit.strategy.rootfs === "dir" ? "lazy" : unit.strategy.rootfs,
      entrypoint: BENCH_COMMAND[0],
    });
    options.volumes = ctx.volumes;
    const rows: BenchRow[] = [];
    const caches: Cache[] = unit.strategy.rootfs === "dir" ? ["warm"] : ["cold", "warm"];
    for (const cache of caches) {
      // A warm-only unit still runs cold first (unrecorded): that run fills the cache.
      if (cache === "warm" && !unit.record.includes("warm")) continue;
      const m = await measureRun({
        home,
        runtime,
        imageRef: ctx.ref,
        options,
        expect: EXPECT,
        timeoutMs: ctx.timeoutMs,
      });
      if (unit.record.includes(cache)) {
        rows.push({
          runtime: unit.strategy.runtime,
          rootfs: unit.strategy.rootfs,
          image: unit.image,
          bindMounts: unit.bindMounts,
          cache,
          ...m,
        });
      }
    }
    return rows;
  } finally {
    await releaseHome(home);
  }
}

function makeRuntime(s: Strategy, tree: string | undefined): Runtime {
  if (s.rootfs === "dir") return new DirRuntime(tree!);
  return getRuntime(s.runtime, s.rootfs as RootfsStrategy);
}
