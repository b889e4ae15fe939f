/**
 * IPAM leases that no run holds, in homes that still exist. host-local keeps one file per leased
 * address under the default network's `dataDir` (`<home>/network/ipam/<network>/<ip>`), naming the
 * attachment (container id, interface) it was given to. Every run and pool entry records its
 * attachment (owners.ts) before the ADD that leases, and drops the record only after its DEL: a lease
 * whose id no record names was left by a DEL that failed and was given up on, or by records lost with
 * /run (a reboot). It is released with host-local's own DEL for that id, as the bridge plugin would.
 */
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { errorMessage } from "../util/errors.js";
import { execPlugin } from "./cni.js";
import { DEFAULT_FILE, DEFAULT_PLUGIN_DIRS, parseConf } from "./conflist.js";
import { homeExists, readHomeRecords, readRunRecords } from "./owners.js";

interface Lease {
  ip: string;
  id: string;
  ifName: string;
  /** The IPAM config host-local reads (the bridge plugin's, with its `ipam` key). */
  conf: { type: string; name: string; cniVersion: string; [key: string]: unknown };
}

/** The leases of the default networks of live homes (read before the records: see releaseUnheldLeases). */
async function liveHomeLeases(): Promise<Lease[]> {
  const out: Lease[] = [];
  for (const { home } of await readHomeRecords()) {
    if (!(await homeExists(home))) continue; // a home that is gone: the sweep's other part
    const file = path.join(home, "network", DEFAULT_FILE);
    const text = await readFile(file, "utf8").catch(() => undefined);
    if (text === undefined) continue;
    let list: ReturnType<typeof parseConf>;
    try {
      list = parseConf(JSON.parse(text), file);
    } catch {
      continue; // a broken file is its home's runs' to report
    }
    const main = list.plugins[0];
    const ipam = main?.ipam as { type?: string; dataDir?: string } | undefined;
    if (!main || ipam?.type !== "host-local" || !ipam.dataDir) continue;
    const dir = path.join(ipam.dataDir, list.name);
    const conf = { ...main, type: "host-local", name: list.name, cniVersion: list.cniVersion };
    for (const ip of await readdir(dir).catch(() => [] as string[])) {
      if (!/^\d+\.\d+\.\d+\.\d+$/.test(ip)) continue;
      const [id, ifName] = (await readFile(path.join(dir, ip), "utf8").catch(() => "")).split("\r\n");
      if (id && ifName) out.push({ ip, id: id.trim(), ifName: ifName.trim(), conf });
    }
  }
  return out;
}

/**
 * Releases the leases of live homes that no run record names. The leases are read before the records:
 * a lease seen was made after its record was written, so a record missing afterwards was dropped after
 * its DEL (a DEL now is then a no-op) or never dropped a lease it should have.
 */
export async function releaseUnheldLeases(report: { released: string[]; errors: string[] }): Promise<void> {
  const leases = await liveHomeLeases();
  if (leases.length === 0) return;
  const held = new Set<string>();
  for (const { rec } of await readRunRecords()) {
    for (const r of rec.resources) if (r.kind === "cni") held.add(r.attachment.containerId);
  }
  for (const lease of leases) {
    if (held.has(lease.id)) continue;
    const at = { containerId: lease.id, netns: "", ifName: lease.ifName };
    try {
      await execPlugin(lease.conf, "DEL", at, DEFAULT_PLUGIN_DIRS);
      report.released.push(`IPAM lease ${lease.ip} of ${lease.id} (${lease.conf.name})`);
    } catch (err) {
      report.errors.push(`IPAM lease ${lease.ip} of ${lease.id}: ${errorMessage(err)}`);
    }
  }
}
