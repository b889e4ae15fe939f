/**
 * What runs of one home could have left on the host's network, scoped to that home so other tests
 * running at the same time do not count: namespaces with its prefix, links on its bridge, iptables
 * rules naming its network or addresses of its subnet (but the home's own rules, which stay with it as
 * its bridge does), and IPAM leases.
 */
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { homeNetworkNames, listNetns, sweepNetwork } from "../../src/network/index.js";
import { exec } from "../../src/util/exec.js";
import type { KindlingHome } from "../../src/util/home.js";
import { stopHomeService } from "./home-service.js";

/** The home's default subnet prefix ("10.238.28."), once its network exists. */
async function subnetPrefix(home: KindlingHome): Promise<string | undefined> {
  const names = homeNetworkNames(home);
  const text = await readFile(path.join(names.dir, "default.conflist"), "utf8").catch(() => undefined);
  const subnet = text ? /"subnet": "(\d+\.\d+\.\d+\.)0\/24"/.exec(text)?.[1] : undefined;
  return subnet;
}

export async function networkLeftovers(home: KindlingHome): Promise<string[]> {
  // A service the CLI started keeps namespaces ready (src/network/pool.ts): its, not a run's; it
  // releases them when it stops (a service a test started is the test's to stop).
  await stopHomeService(home.root);
  const names = homeNetworkNames(home);
  const out: string[] = [];
  for (const ns of await listNetns(names.netnsPrefix)) out.push(`netns ${ns}`);
  const links = await exec("ip", ["-o", "link", "show", "master", names.bridge], { allowFailure: true });
  for (const l of links.stdout.split("\n").filter(Boolean))
    out.push(`link on ${names.bridge}: ${l.split("\\")[0]}`);
  const prefix = await subnetPrefix(home);
  for (const table of ["nat", "filter"]) {
    const rules = (await exec("iptables", ["-t", table, "-S"])).stdout.split("\n");
    for (const r of rules) {
      if (r.includes(`"${names.network} `)) continue; // the home's own rules (homerules.ts), like its bridge
      if (
        r.includes(`"${names.network}`) ||
        r.includes(`${names.network}\\"`) ||
        (prefix && r.includes(prefix))
      )
        out.push(`iptables -t ${table}: ${r}`);
    }
  }
  const ipam = path.join(names.dir, "ipam", names.network);
  for (const f of await readdir(ipam).catch(() => [])) {
    if (f !== "lock" && !f.startsWith("last_reserved_ip")) out.push(`IPAM lease ${f}`);
  }
  return out;
}

/** Everything that names the home's network, for a before/after comparison. */
export async function networkSnapshot(home: KindlingHome): Promise<string[]> {
  return (await networkLeftovers(home)).sort();
}

/**
 * After a network test: releases what runs of homes that are gone left (a killed run of a removed home),
 * iptables included; returns what could not be released. Cheap when there is nothing (three spawns).
 */
export async function sweepDeadNetworks(): Promise<string[]> {
  return (await sweepNetwork({ full: true })).errors;
}

/** The iptables rules and chains (nat and filter) that name the home's network at all, its own included. */
export async function homeRulesLeft(home: KindlingHome): Promise<string[]> {
  const { network } = homeNetworkNames(home);
  const out: string[] = [];
  for (const table of ["nat", "filter"]) {
    // (case apart: the home's portmap mark chain is KINDLING-<tag>-MARK)
    for (const r of (await exec("iptables", ["-t", table, "-S"])).stdout.split("\n"))
      if (r.toLowerCase().includes(network)) out.push(`iptables -t ${table}: ${r}`);
  }
  return out;
}

/**
 * The lines of `ip -o link`, `ip netns`, `iptables -S`, `iptables -t nat -S` naming one of `needles`,
 * sorted. `normalize`: a link as its name and bridge (not its index or carrier state), a namespace
 * without its id, for a before/after comparison.
 */
export async function hostLines(needles: string[], normalize = false): Promise<string[]> {
  const outs = await Promise.all([
    exec("ip", ["-o", "link"]),
    exec("ip", ["netns", "list"]),
    exec("iptables", ["-S"]),
    exec("iptables", ["-t", "nat", "-S"]),
  ]);
  const lines = outs.flatMap((o) => o.stdout.split("\n")).filter((l) => needles.some((n) => l.includes(n)));
  if (!normalize) return lines.sort();
  return lines
    .map((l) => {
      const link = /^\d+: ([^:@]+)[^ ]*: .*?(master \S+|$)/.exec(l);
      return link ? `link ${link[1]} ${link[2]}`.trim() : l.replace(/ \(id: \d+\)$/, "");
    })
    .sort();
}

/** GETs url until it answers, within a bounded time. */
export async function fetchText(url: string, timeoutMs = 20_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
      return await r.text();
    } catch (err) {
      last = err;
      await sleep(100);
    }
  }
  throw new Error(`${url} did not answer within ${timeoutMs} ms: ${(last as Error)?.message}`);
}
