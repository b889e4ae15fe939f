/**
 * Releases the network resources whose owner is gone: runs whose process died with their home (or run
 * directory) deleted, and homes that no longer exist. A run in a home that still exists is its home's
 * job (cleanupStaleRuns, from owner.json); this sweep is for what no home will ever clean.
 *
 * Owners are found from the records of owners.ts and from names: `kl-<tag>` bridges, `kl-<tag>-<run>`
 * namespaces, `kindling-<tag>` in iptables comments. The quick part reads files only; it spawns (ip,
 * the CNI plugins' DEL, iptables) only for what it found dead. The full part reads the iptables tables,
 * which costs two spawns, and the leases of live homes no run holds (leases.ts): it runs when something
 * was dead, when asked (doctor --fix, the test kit), and otherwise at most every FULL_SWEEP_EVERY_MS from
 * a run's network setup.
 */
import { mkdtemp, readdir, readFile, readlink, rm, stat, unlink } from "node:fs/promises";
import path from "node:path";
import { listPids } from "../host/proc.js";
import { errorMessage } from "../util/errors.js";
import { exec } from "../util/exec.js";
import { ipToInt } from "./conflist.js";
import { removeDeadRules } from "./iptables.js";
import { releaseUnheldLeases } from "./leases.js";
import { deleteNetns, NETNS_DIR } from "./netns.js";
import {
  claimRun,
  exists,
  forgetHome,
  forgetRun,
  homeExists,
  lastFullSweepMs,
  markFullSweep,
  OWNERS_DIR,
  type RunRecord,
  readHomeRecords,
  readRunRecords,
  removeOrphanPoolMarks,
  removeOrphanReleaseFiles,
  runIsDead,
} from "./owners.js";
import { type NetworkResource, releaseNetworkResource } from "./resources.js";

export const FULL_SWEEP_EVERY_MS = 10 * 60_000;
/** Where Kindling's default networks take their /24s: an address here that no host prefix covers is dead. */
const KINDLING_RANGE: [number, number] = [ipToInt("10.192.0.0"), 10];
/** Namespaces no record names are left alone until this old (and empty of processes). */
const UNRECORDED_NETNS_AGE_MS = 2 * 60_000;
/** Before records (owners.ts), a home's bridge was recorded here: /run/kindling-bridges/<bridge> = its conflist. */
const LEGACY_BRIDGE_OWNERS = "/run/kindling-bridges";

export interface SweepReport {
  /** What was released, one line each. */
  released: string[];
  errors: string[];
}

export interface SweepOptions {
  /** Read the iptables tables even if nothing dead was found by the quick part. */
  full?: boolean;
  /** Only do the full part if the last one is older than FULL_SWEEP_EVERY_MS (a run's setup). */
  rateLimited?: boolean;
}

interface TagOwner {
  /** Whether the home (for a legacy record, its conflist) the tag belongs to exists. */
  alive: boolean;
  /** A legacy record's file, removed with the bridge. */
  legacy?: string;
}

export async function sweepNetwork(opts: SweepOptions = {}): Promise<SweepReport> {
  const report: SweepReport = { released: [], errors: [] };
  const owners = await tagOwners();
  const bridges = await kindlingBridges();
  const deadRuns = new Set<string>();

  // runs whose owner died with its home or run directory
  const records = await readRunRecords();
  const recorded = new Set(records.map((r) => r.netnsName));
  for (const { netnsName, rec } of records) {
    if (!(await runIsDead(rec))) continue;
    const release = await claimRun(netnsName);
    if (!release) continue;
    deadRuns.add(rec.runId);
    // a pooled namespace's attachment keeps the pool's id (pool.ts): portmap's rules name that
    for (const r of rec.resources) if (r.kind === "cni") deadRuns.add(r.attachment.containerId);
    try {
      await releaseRun(netnsName, rec, report);
    } finally {
      await release();
    }
  }

  await removeOrphanReleaseFiles();
  await removeOrphanPoolMarks();

  // namespaces no record names: of a dead home, or (made before records existed) old and empty
  for (const name of await readdir(NETNS_DIR).catch(() => [] as string[])) {
    if (!/^kl-[0-9a-f]{8}-./.test(name) || recorded.has(name)) continue;
    const owner = owners.get(name.slice(3, 11));
    // a live home's namespace is its cleanupStaleRuns' (from owner.json); so is an unrecorded one
    // beside a bridge (a home from before records); one of no known home is taken once old and empty
    const stale = owner
      ? !owner.alive
      : !bridges.has(name.slice(3, 11)) && opts.full === true && (await unusedAndOld(name));
    if (!stale) continue;
    try {
      await deleteNetns(name);
      report.released.push(`network namespace ${name}`);
    } catch (err) {
      report.errors.push(`network namespace ${name}: ${errorMessage(err)}`);
    }
  }

  // bridges of homes that are gone (a bridge outlives its runs on purpose, like docker0, not its home)
  const deadHomes = [...owners.entries()].filter(([, o]) => !o.alive).map(([tag]) => tag);
  for (const tag of deadHomes) {
    if (!bridges.has(tag)) continue;
    await deleteBridge(tag, report);
  }

  if (opts.full === true) await releaseUnrecordedBridges(bridges, report);

  const somethingDead = report.released.length > 0 || deadHomes.length > 0 || deadRuns.size > 0;
  const due =
    opts.full === true ||
    (opts.rateLimited === true && Date.now() - (await lastFullSweepMs()) > FULL_SWEEP_EVERY_MS);
  let rulesFailed = false;
  if (somethingDead || due) {
    const rules = await removeDeadRules(async () => {
      // read after the rules: what made a rule (home record, bridge, address) existed before it
      const [nowOwners, nowBridges, prefixes] = await Promise.all([
        tagOwners(),
        kindlingBridges(),
        hostPrefixes(),
      ]);
      return {
        tagIsDead: (tag) => {
          const o = nowOwners.get(tag);
          return o ? !o.alive : !nowBridges.has(tag);
        },
        runIsDead: (id) => deadRuns.has(id),
        addressIsDead: (ip) => {
          const n = ipToInt(ip);
          return inPrefix(n, KINDLING_RANGE) && !prefixes.some((p) => inPrefix(n, p));
        },
      };
    });
    if (rules.removed > 0) report.released.push(`${rules.removed} iptables rules and chains`);
    report.errors.push(...rules.errors);
    rulesFailed = rules.errors.length > 0;
    // leases in live homes that no run holds (their DEL failed and was given up on; /run lost at a reboot)
    await releaseUnheldLeases(report);
    await markFullSweep().catch(() => {});
  }
  // the records of dead homes go last: until then a failed step above is retried by the next sweep
  if (!rulesFailed) {
    for (const tag of deadHomes) {
      if (report.errors.some((e) => e.includes(`kl-${tag}`))) continue;
      await forgetHome(tag);
      const legacy = owners.get(tag)?.legacy;
      if (legacy) await unlink(legacy).catch(() => {});
    }
  }
  return report;
}

/** Each recorded tag's owner and whether it still exists (homes/, and the legacy bridge records). */
async function tagOwners(): Promise<Map<string, TagOwner>> {
  const out = new Map<string, TagOwner>();
  for (const bridge of await readdir(LEGACY_BRIDGE_OWNERS).catch(() => [] as string[])) {
    const conflist = await readFile(path.join(LEGACY_BRIDGE_OWNERS, bridge), "utf8").catch(() => "");
    if (/^kl-[0-9a-f]{8}$/.test(bridge) && conflist)
      out.set(bridge.slice(3), {
        alive: await exists(conflist),
        legacy: path.join(LEGACY_BRIDGE_OWNERS, bridge),
      });
  }
  for (const rec of await readHomeRecords()) out.set(rec.tag, { alive: await homeExists(rec.home) });
  return out;
}

/**
 * `kl-<tag>` bridges that no home record names and nothing is plugged into: their home's record is
 * gone (a sweep forgot a deleted home while its still-running service made the bridge again). Every
 * setup records its home before the bridge plugin can make the bridge, so the owners are read after
 * the bridges were listed: a bridge seen there has its record by then, unless it is an orphan.
 */
async function releaseUnrecordedBridges(bridges: Set<string>, report: SweepReport): Promise<void> {
  const owners = await tagOwners();
  for (const tag of bridges) {
    if (owners.has(tag)) continue;
    const ports = await readdir(`/sys/class/net/kl-${tag}/brif`).catch(() => undefined);
    if (!ports || ports.length > 0) continue;
    await deleteBridge(tag, report);
  }
}

async function deleteBridge(tag: string, report: SweepReport): Promise<void> {
  const r = await exec("ip", ["link", "delete", `kl-${tag}`, "type", "bridge"], { allowFailure: true });
  if (r.code === 0 || /Cannot find device/i.test(r.stderr)) report.released.push(`bridge kl-${tag}`);
  else report.errors.push(`bridge kl-${tag}: ${r.stderr.trim()}`);
}

/** The tags of the `kl-<tag>` bridges on the host (from /sys, no spawn). */
async function kindlingBridges(): Promise<Set<string>> {
  const names = await readdir("/sys/class/net").catch(() => [] as string[]);
  return new Set(names.filter((n) => /^kl-[0-9a-f]{8}$/.test(n)).map((n) => n.slice(3)));
}

/**
 * Releases a dead run's resources in reverse. A host-local lease kept under a home that is gone went
 * with it: its DEL is pointed at a scratch directory, or host-local would make the home's path again.
 */
export async function releaseRun(netnsName: string, rec: RunRecord, report: SweepReport): Promise<void> {
  const homeGone = !(await homeExists(rec.home));
  let scratch: string | undefined;
  const failed: { resource: NetworkResource; err: unknown }[] = [];
  try {
    const release = async (r: NetworkResource) => {
      let resource = r;
      if (homeGone && r.kind === "cni") {
        scratch ??= await mkdtemp(path.join(OWNERS_DIR, ".ipam-"));
        resource = { ...r, list: withIpamOutside(r.list, rec.home, scratch) };
      }
      await releaseNetworkResource(resource);
    };
    for (const r of [...rec.resources].reverse()) {
      await release(r).catch((err: unknown) => failed.push({ resource: r, err }));
    }
    // A DEL that failed (the bridge plugin fails on masquerade rules that are already gone) is tried
    // once more with the namespace gone: the plugins then release the lease and rules they can, and
    // what they cannot (rules naming this run) goes with the iptables part of the sweep.
    for (const f of failed.splice(0)) {
      if (f.resource.kind !== "cni") failed.push(f);
      else await release(f.resource).catch((err: unknown) => failed.push({ ...f, err }));
    }
  } finally {
    if (scratch) await rm(scratch, { recursive: true, force: true });
  }
  for (const f of failed) report.errors.push(`${netnsName}: ${errorMessage(f.err)}`);
  if (failed.length > 0) return;
  await forgetRun(netnsName);
  report.released.push(`network of run ${rec.runId} (${netnsName}, home ${rec.home})`);
}

/** `list` with every IPAM dataDir under `home` pointed at `dir` (host-local would make the home's path again). */
export function withIpamOutside<L extends { plugins: Record<string, unknown>[] }>(
  list: L,
  home: string,
  dir: string,
): L {
  const under = (p: unknown) => typeof p === "string" && (p === home || p.startsWith(`${home}/`));
  return {
    ...list,
    plugins: list.plugins.map((p) => {
      const ipam = p.ipam as Record<string, unknown> | undefined;
      return ipam && under(ipam.dataDir) ? { ...p, ipam: { ...ipam, dataDir: dir } } : p;
    }),
  };
}

/** A namespace no process is in, made more than UNRECORDED_NETNS_AGE_MS ago. */
async function unusedAndOld(name: string): Promise<boolean> {
  const st = await stat(path.join(NETNS_DIR, name)).catch(() => undefined);
  if (!st || Date.now() - st.mtimeMs < UNRECORDED_NETNS_AGE_MS) return false;
  const inode = `net:[${st.ino}]`;
  for (const pid of await listPids()) {
    if ((await readlink(`/proc/${pid}/ns/net`).catch(() => "")) === inode) return false;
  }
  return true;
}

/** IPv4 prefixes of the host's addresses. */
async function hostPrefixes(): Promise<[number, number][]> {
  const r = await exec("ip", ["-o", "-4", "addr", "show"], { allowFailure: true });
  return [...r.stdout.matchAll(/inet (\d+\.\d+\.\d+\.\d+)\/(\d+)/g)].map((m) => [
    ipToInt(m[1]!),
    Number(m[2]),
  ]);
}

function inPrefix(n: number, [net, len]: [number, number]): boolean {
  if (len === 0) return true;
  const mask = len === 32 ? 0xffffffff : (~0 << (32 - len)) >>> 0;
  return (n & mask) >>> 0 === (net & mask) >>> 0;
}
