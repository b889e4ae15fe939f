/**
 * What networking adds to a runc run's start, host side, measured through the run's own code path
 * (setUpNetwork, then the scope's inline release): for `kindling bench` (its network row) and
 * bench/network.ts. "Warm": the home's bridge and default network exist (a first round made them).
 * Each round sets up a bridged run's network from scratch (namespace, bridge+host-local ADD) and, in
 * the same round, one taken from a pool of ready namespaces (pool.ts, as the home's service keeps it).
 */
import { readdir } from "node:fs/promises";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { Scope } from "../util/scope.js";
import { type ResourceHolder, setUpNetwork } from "./attach.js";
import { networkSettings } from "./conflist.js";
import { homeTag, poolDir } from "./owners.js";
import { startNetworkPool } from "./pool.js";
import { type NetworkResource, releaseNetworkResource } from "./resources.js";
import type { PortMapping } from "./types.js";

export interface NetworkCost {
  /** Setup from scratch, per round (ms). */
  setupMs: number[];
  /** Its inline teardown (CNI DEL, the namespace's removal). */
  teardownMs: number[];
  /** Setup from the pool (the run's record update). */
  pooledSetupMs: number[];
}

/** A holder that releases as RunDir does, without owner.json (the benchmark has no run directory). */
export function memoryHolder(): ResourceHolder {
  return {
    async hold(scope: Scope, r: NetworkResource) {
      scope.defer("network", () => releaseNetworkResource(r));
    },
    async update(r: NetworkResource, change: Partial<NetworkResource>) {
      Object.assign(r, change);
    },
  };
}

const now = () => Number(process.hrtime.bigint()) / 1e6;
let seq = 0;

/** One bridged network set up (from the pool or not) and released inline; its two times. */
export async function timeNetworkSetup(
  home: KindlingHome,
  pool: boolean,
  ports: PortMapping[] = [],
): Promise<{ setupMs: number; teardownMs: number }> {
  const t0 = now();
  let t1 = 0;
  await Scope.with(async (scope) => {
    await setUpNetwork({
      home,
      runId: `m${process.pid}${seq++}`,
      mode: "bridge",
      ports,
      settings: networkSettings(),
      holder: memoryHolder(),
      scope,
      pool,
    });
    t1 = now();
  });
  return { setupMs: t1 - t0, teardownMs: now() - t1 };
}

/** Waits (bounded) until the home's pool has `size` ready namespaces. */
export async function poolReady(home: KindlingHome, size: number, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  const dir = poolDir(homeTag(home.root));
  while ((await readdir(dir).catch(() => [])).length < size) {
    if (Date.now() > deadline) throw new Error(`the network pool of ${home.root} did not fill in ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * `rounds` interleaved rounds (after one unrecorded warm-up): a setup from scratch, then one from a
 * pool of one namespace kept by this process (refilled between rounds, as the service does it).
 */
export async function measureNetworkCost(home: KindlingHome, rounds: number): Promise<NetworkCost> {
  if (networkSettings().cniConfDir !== undefined)
    throw new KindlingError(
      "KINDLING_CNI_CONF_DIR is set: the network is measured on the home's default network",
    );
  const cost: NetworkCost = { setupMs: [], teardownMs: [], pooledSetupMs: [] };
  await timeNetworkSetup(home, false);
  const pool = startNetworkPool(home, { size: 1 });
  try {
    for (let i = 0; i < rounds; i++) {
      const plain = await timeNetworkSetup(home, false);
      cost.setupMs.push(plain.setupMs);
      cost.teardownMs.push(plain.teardownMs);
      await poolReady(home, 1);
      cost.pooledSetupMs.push((await timeNetworkSetup(home, true)).setupMs);
    }
  } finally {
    await pool.stop();
  }
  return cost;
}
