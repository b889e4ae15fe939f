/**
 * Which CNI network a run joins: the user's (the first config in their CNI config directory, as libcni
 * orders them) or Kindling's default, made once per KINDLING_HOME: a bridge and a /24 of its own, so
 * two homes (two workers) never hand out the same address, and host-local's leases under the home.
 */
import { link, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { type Config, config } from "../config/index.js";
import { tempPathFor, writeFileAtomic } from "../util/atomic.js";
import { KindlingError } from "../util/errors.js";
import { exec } from "../util/exec.js";
import type { KindlingHome } from "../util/home.js";
import type { CniConfList, CniPluginConf } from "./cni.js";
import { ensureHomeRules, homeMarkChain, removeHomeRules } from "./homerules.js";
import { forgetHome, homeTag, recordHome, waitForHandOffs } from "./owners.js";

/** Where Debian's containernetworking-plugins puts the plugins, then the upstream default. */
export const DEFAULT_PLUGIN_DIRS = ["/usr/lib/cni", "/opt/cni/bin"];
export const CNI_VERSION = "1.0.0";

/** What the network module needs from the settings. */
export interface NetworkSettings {
  /** A directory of CNI configs (.conflist/.conf/.json); unset: Kindling's default network. */
  cniConfDir?: string;
  /** Where plugins are looked up, in order. */
  pluginDirs: string[];
}

/** The network settings from Kindling's configuration. */
export function networkSettings(cfg: Config = config()): NetworkSettings {
  return { cniConfDir: cfg.cniConfDir, pluginDirs: DEFAULT_PLUGIN_DIRS };
}

/** The names a home's default network uses: `kl-<tag>` bridge, `kindling-<tag>` network, `kl-<tag>-` netns. */
export interface HomeNetworkNames {
  tag: string;
  bridge: string;
  network: string;
  netnsPrefix: string;
  /** $KINDLING_HOME/network */
  dir: string;
}

export function homeNetworkNames(home: KindlingHome): HomeNetworkNames {
  const tag = homeTag(home.root);
  return {
    tag,
    bridge: `kl-${tag}`, // at most 15 characters (IFNAMSIZ)
    network: `kindling-${tag}`,
    netnsPrefix: `kl-${tag}-`,
    dir: path.join(home.root, "network"),
  };
}

/**
 * Kindling's default network for `names`, on `subnet`. Outbound NAT and forwarding are the home's rules
 * (homerules.ts: made once per home and boot, one process) rather than the bridge plugin's `ipMasq` and
 * the firewall plugin's, which cost about 8 iptables processes each per run on ADD and again on DEL.
 */
export function defaultConfList(names: HomeNetworkNames, subnet: string): CniConfList {
  return {
    cniVersion: CNI_VERSION,
    name: names.network,
    plugins: [
      {
        type: "bridge",
        bridge: names.bridge,
        isGateway: true,
        ipMasq: false,
        hairpinMode: true,
        ipam: {
          type: "host-local",
          ranges: [[{ subnet }]],
          routes: [{ dst: "0.0.0.0/0" }],
          dataDir: path.join(names.dir, "ipam"),
        },
      },
      // its masquerade mark chain is the home's (homerules.ts): half of its ADD's time went to checking its own
      {
        type: "portmap",
        capabilities: { portMappings: true },
        snat: true,
        externalSetMarkChain: homeMarkChain(names.tag),
      },
    ],
  };
}

/** The plugin types Kindling's default network runs (its IPAM plugin included): what doctor requires. */
export function defaultPluginTypes(): string[] {
  const names = { tag: "0", bridge: "kl-0", network: "kindling-0", netnsPrefix: "kl-0-", dir: "/" };
  const types: string[] = [];
  for (const p of defaultConfList(names, "10.192.0.0/24").plugins) {
    types.push(p.type);
    const ipam = (p.ipam as { type?: string } | undefined)?.type;
    if (ipam) types.push(ipam);
  }
  return types;
}

/** The loopback plugin alone: brings `lo` up in the run's namespace. */
export const LOOPBACK_LIST: CniConfList = {
  cniVersion: CNI_VERSION,
  name: "kindling-loopback",
  plugins: [{ type: "loopback" }],
};

/** The network a run in `home` joins with `--network bridge`. */
export async function loadNetwork(home: KindlingHome, settings: NetworkSettings): Promise<CniConfList> {
  if (settings.cniConfDir) return loadUserNetwork(settings.cniConfDir);
  const list = await homeDefaultNetwork(home);
  const subnet = defaultSubnet(list);
  // (the home's record first: rules marks of a tag with no home record are dropped by the sweep)
  if (subnet) await recordHome(home.root).then(() => ensureHomeRules(homeNetworkNames(home).tag, subnet));
  return list;
}

/** The subnet of a default network (its bridge's host-local range). */
function defaultSubnet(list: CniConfList): string | undefined {
  const ipam = list.plugins[0]?.ipam as { ranges?: { subnet?: string }[][] } | undefined;
  return ipam?.ranges?.[0]?.[0]?.subnet;
}

/** The first config of `dir` in lexical order (.conflist, .conf, .json), as libcni picks the default. */
export async function loadUserNetwork(dir: string): Promise<CniConfList> {
  let files: string[];
  try {
    files = (await readdir(dir)).filter((f) => /\.(conflist|conf|json)$/.test(f)).sort();
  } catch (err) {
    throw new KindlingError(`CNI config directory ${dir}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  if (files.length === 0)
    throw new KindlingError(`CNI config directory ${dir} has no .conflist, .conf or .json file`);
  const file = path.join(dir, files[0]!);
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(file, "utf8"));
  } catch (err) {
    throw new KindlingError(`CNI config ${file}: not valid JSON (${(err as Error).message})`);
  }
  return parseConf(parsed, file);
}

/** A conflist, or a single-plugin .conf turned into a list of one; names what is wrong. */
export function parseConf(raw: unknown, where: string): CniConfList {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new KindlingError(`CNI config ${where}: expected a JSON object`);
  }
  const o = raw as Record<string, unknown>;
  if (typeof o.name !== "string" || o.name === "")
    throw new KindlingError(`CNI config ${where}: "name" is missing`);
  if (typeof o.cniVersion !== "string")
    throw new KindlingError(`CNI config ${where}: "cniVersion" is missing`);
  let plugins: unknown = o.plugins;
  if (plugins === undefined) {
    // a .conf: the object is the one plugin
    const { name: _n, cniVersion: _v, ...plugin } = o;
    plugins = [plugin];
  }
  if (!Array.isArray(plugins) || plugins.length === 0) {
    throw new KindlingError(`CNI config ${where}: "plugins" must be a non-empty list`);
  }
  plugins.forEach((p, i) => {
    if (typeof p !== "object" || p === null || typeof (p as { type?: unknown }).type !== "string") {
      throw new KindlingError(`CNI config ${where}: plugins[${i}] has no "type"`);
    }
  });
  return {
    cniVersion: o.cniVersion,
    name: o.name,
    ...(o.disableCheck === true ? { disableCheck: true } : {}),
    plugins: plugins as CniPluginConf[],
  };
}

/** The home's default network, under $KINDLING_HOME/network: written by its first bridged run. */
export const DEFAULT_FILE = "default.conflist";

/**
 * The home's default network, written on first use. Its /24 is chosen from 10.192.0.0/10 by a hash of
 * the home, skipping subnets that overlap an address or route the host already has.
 */
export async function homeDefaultNetwork(home: KindlingHome): Promise<CniConfList> {
  const names = homeNetworkNames(home);
  const file = path.join(names.dir, DEFAULT_FILE);
  const existing = await readFile(file, "utf8").catch(() => undefined);
  if (existing !== undefined) return upgraded(names, file, parseConf(JSON.parse(existing), file));
  await mkdir(names.dir, { recursive: true });
  const subnet = await pickSubnet(names.tag);
  const list = defaultConfList(names, subnet);
  // Of two first runs in one home, one publishes; the other reads what it published. Written aside
  // and linked into place (link fails if the name exists), so no reader ever sees a partial file.
  const tmp = tempPathFor(file);
  try {
    await writeFile(tmp, `${JSON.stringify(list, null, 2)}\n`);
    await link(tmp, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    return parseConf(JSON.parse(await readFile(file, "utf8")), file);
  } finally {
    await rm(tmp, { force: true });
  }
  return list;
}

/**
 * The default networks Kindling wrote before: first (until the home rules replaced the bridge plugin's
 * per-run `ipMasq` and the firewall plugin), then without portmap's external mark chain. A home's file
 * that is exactly one of these, on its subnet, is Kindling's own and is upgraded in place; any other
 * file (edited by someone) is kept as it is.
 */
function earlierDefaultConfLists(names: HomeNetworkNames, subnet: string): CniConfList[] {
  const now = defaultConfList(names, subnet);
  const portmap = { type: "portmap", capabilities: { portMappings: true }, snat: true };
  const second = { ...now, plugins: [now.plugins[0]!, portmap] };
  const first = {
    ...now,
    plugins: [{ ...now.plugins[0]!, ipMasq: true }, portmap, { type: "firewall", backend: "iptables" }],
  };
  return [first, second];
}

async function upgraded(names: HomeNetworkNames, file: string, list: CniConfList): Promise<CniConfList> {
  const subnet = defaultSubnet(list);
  const text = JSON.stringify(list);
  if (!subnet || !earlierDefaultConfLists(names, subnet).some((l) => JSON.stringify(l) === text)) return list;
  const now = defaultConfList(names, subnet);
  // runs made on the old list keep it in their records: their release runs the plugins they were given
  await writeFileAtomic(file, `${JSON.stringify(now, null, 2)}\n`);
  return now;
}

/** IPv4 prefixes the host uses (addresses and routes), as [network, length]. */
async function hostPrefixes(): Promise<[number, number][]> {
  const out: [number, number][] = [];
  const [addrs, routes] = await Promise.all([
    exec("ip", ["-o", "-4", "addr", "show"], { allowFailure: true }),
    exec("ip", ["-4", "route", "show", "table", "all"], { allowFailure: true }),
  ]);
  for (const m of addrs.stdout.matchAll(/inet (\d+\.\d+\.\d+\.\d+)\/(\d+)/g))
    out.push([ipToInt(m[1]!), Number(m[2])]);
  for (const line of routes.stdout.split("\n")) {
    const m = /^(?:\S+\s+)?(\d+\.\d+\.\d+\.\d+)(?:\/(\d+))?\s/.exec(line);
    if (m && m[1] !== "0.0.0.0") out.push([ipToInt(m[1]!), Number(m[2] ?? 32)]);
  }
  return out;
}

export function ipToInt(ip: string): number {
  return ip.split(".").reduce((n, part) => n * 256 + Number(part), 0);
}

export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 255).join(".");
}

function overlaps(a: number, alen: number, b: number, blen: number): boolean {
  const len = Math.min(alen, blen);
  if (len === 0) return true;
  const mask = len === 32 ? 0xffffffff : (~0 << (32 - len)) >>> 0;
  return (a & mask) >>> 0 === (b & mask) >>> 0;
}

async function pickSubnet(tag: string): Promise<string> {
  const used = await hostPrefixes();
  const base = ipToInt("10.192.0.0");
  const count = 1 << 14; // /24s in a /10
  const start = Number.parseInt(tag, 16) % count;
  for (let i = 0; i < count; i++) {
    const net = base + ((start + i) % count) * 256;
    if (!used.some(([n, l]) => l > 0 && overlaps(net, 24, n, l))) return `${intToIp(net)}/24`;
  }
  throw new KindlingError(
    "no free /24 in 10.192.0.0/10 for Kindling's network: every one overlaps a host route",
  );
}

/**
 * Removes the home's bridge (made by the bridge plugin on first use and kept for the next runs, like
 * docker0). For a home that goes away (tests, `rm -rf` of a worker): its runs must have ended; a run's
 * teardown handed to a process of its own (teardown.ts) is waited for, bounded.
 */
export async function removeHomeNetwork(home: KindlingHome): Promise<void> {
  const { bridge, tag } = homeNetworkNames(home);
  await waitForHandOffs(home.root, 30_000); // a supervised run's teardown may still be under way (teardown.ts)
  const r = await exec("ip", ["link", "delete", bridge, "type", "bridge"], { allowFailure: true });
  if (r.code !== 0 && !/Cannot find device|does not exist/i.test(r.stderr)) {
    throw new Error(`ip link delete ${bridge} failed: ${r.stderr.trim()}`);
  }
  await removeHomeRules(tag);
  await forgetHome(tag);
}
