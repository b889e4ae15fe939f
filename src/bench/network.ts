/**
 * `kindling bench`'s network row: what `--network bridge` adds to a runc run's start, host side,
 * measured by src/network/cost.ts (the same code path bench/network.ts reports): a setup from scratch
 * (namespace, bridge+host-local ADD), one taken from the service's pool, and the inline teardown.
 * Its variant key is "network" (`--filter network` runs it alone).
 */
import { mkdtemp, rm } from "node:fs/promises";
import path from "node:path";
import { removeHomeNetwork } from "../network/conflist.js";
import { measureNetworkCost } from "../network/cost.js";
import { KindlingHome } from "../util/home.js";
import { median } from "./rows.js";

export const NETWORK_KEY = "network";

export interface NetworkRow {
  rounds: number;
  setupMs: number;
  pooledSetupMs: number;
  teardownMs: number;
}

/** `rounds` interleaved rounds in a home of its own under `workDir` (removed afterwards). */
export async function benchNetwork(workDir: string, rounds: number): Promise<NetworkRow> {
  const dir = await mkdtemp(path.join(workDir, "kindling-bench-net-"));
  const home = new KindlingHome(path.join(dir, "home")).ensure();
  try {
    const cost = await measureNetworkCost(home, rounds);
    return {
      rounds,
      setupMs: median(cost.setupMs),
      pooledSetupMs: median(cost.pooledSetupMs),
      teardownMs: median(cost.teardownMs),
    };
  } finally {
    await removeHomeNetwork(home).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

/** The row as table lines (text and markdown alike). */
export function networkTable(n: NetworkRow): string {
  const ms = (v: number) => `${v.toFixed(1)} ms`;
  return [
    `| network (runc, --network bridge, host side; medians of ${n.rounds}) | time |`,
    "|---|---:|",
    `| setup from scratch (namespace with lo, bridge+host-local ADD) | ${ms(n.setupMs)} |`,
    `| setup from the service's pool (KINDLING_NETWORK_POOL) | ${ms(n.pooledSetupMs)} |`,
    `| teardown inline (DEL, namespace removed; an attached run hands it off) | ${ms(n.teardownMs)} |`,
  ].join("\n");
}
