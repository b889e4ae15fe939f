/**
 * The container's /etc/resolv.conf, by Docker's rules: host networking gets the host's file as is;
 * otherwise the host's file without localhost nameservers (unreachable from another namespace) and,
 * as Kindling gives containers no IPv6, without IPv6 ones; none left means Google's public DNS (Docker's
 * default). `--dns` replaces the nameservers; search and options lines are kept.
 */
import { readFile } from "node:fs/promises";
import { isIPv4, isIPv6 } from "node:net";
import { KindlingError } from "../util/errors.js";
import type { NetworkMode } from "./types.js";

export const DOCKER_DEFAULT_DNS = ["8.8.8.8", "8.8.4.4"];
/** systemd-resolved's stub points at 127.0.0.53; the real upstream servers are in this file. */
const RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf";

export function parseDnsFlags(values: string[]): string[] {
  for (const v of values) {
    if (!isIPv4(v) && !isIPv6(v)) throw new KindlingError(`--dns ${v}: not an IP address`);
  }
  return values;
}

function isLocalhost(ip: string): boolean {
  return ip.startsWith("127.") || ip === "::1";
}

/** The resolv.conf text for a container, from the host's `hostText`. */
export function containerResolvConf(hostText: string, mode: NetworkMode, dns: string[]): string {
  const lines = hostText.split("\n");
  const nameserverOf = (l: string) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1];
  const others = lines.filter((l) => nameserverOf(l) === undefined && l.trim() !== "");
  if (dns.length > 0) return `${[...others, ...dns.map((d) => `nameserver ${d}`)].join("\n")}\n`;
  if (mode === "host") return hostText.endsWith("\n") || hostText === "" ? hostText : `${hostText}\n`;
  let servers = lines.map(nameserverOf).filter((s): s is string => s !== undefined);
  servers = servers.filter((s) => !isLocalhost(s) && !isIPv6(s.replace(/%.*$/, "")));
  if (servers.length === 0) servers = DOCKER_DEFAULT_DNS;
  return `${[...others, ...servers.map((s) => `nameserver ${s}`)].join("\n")}\n`;
}

/** The host's resolv.conf (resolved's upstream list when /etc/resolv.conf is only its stub). */
export async function hostResolvConf(): Promise<string> {
  const text = await readFile("/etc/resolv.conf", "utf8").catch(() => "");
  if (/^\s*nameserver\s+127\.0\.0\.53\b/m.test(text)) {
    const upstream = await readFile(RESOLVED_UPSTREAM, "utf8").catch(() => undefined);
    if (upstream !== undefined) return upstream;
  }
  return text;
}
