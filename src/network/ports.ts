/** `-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`, checked and turned into CNI portMappings. */
import { isIPv4 } from "node:net";
import { KindlingError } from "../util/errors.js";
import type { PortMapping } from "./types.js";

function port(spec: string, what: string, s: string): number {
  const n = Number(s);
  if (!/^\d+$/.test(s) || n < 1 || n > 65535) {
    throw new KindlingError(`-p ${spec}: ${what} "${s}" is not a port number (1-65535)`);
  }
  return n;
}

export function parsePublish(spec: string): PortMapping {
  const m = /^(?:(.*):)?([^:/]*):([^:/]*)(?:\/(.*))?$/.exec(spec);
  if (!m) throw new KindlingError(`-p ${spec}: expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`);
  const [, ip, host, container, proto = "tcp"] = m;
  if (proto !== "tcp" && proto !== "udp") {
    throw new KindlingError(`-p ${spec}: unknown protocol "${proto}" (expected tcp or udp)`);
  }
  const hostIP = ip === undefined || ip === "" ? "0.0.0.0" : ip.replace(/^\[(.*)\]$/, "$1");
  if (!isIPv4(hostIP)) throw new KindlingError(`-p ${spec}: HOST_IP "${hostIP}" is not an IPv4 address`);
  return {
    hostIP,
    hostPort: port(spec, "HOST_PORT", host!),
    containerPort: port(spec, "CONTAINER_PORT", container!),
    protocol: proto,
  };
}

/** All -p flags; the same host address, port and protocol twice is refused. */
export function parsePublishFlags(specs: string[]): PortMapping[] {
  const out = specs.map(parsePublish);
  const seen = new Map<string, string>();
  specs.forEach((spec, i) => {
    const p = out[i]!;
    const key = `${p.hostIP}:${p.hostPort}/${p.protocol}`;
    const clash = [...seen.entries()].find(([k]) => {
      const [ip, rest] = [k.slice(0, k.lastIndexOf(":")), k.slice(k.lastIndexOf(":") + 1)];
      return (
        rest === `${p.hostPort}/${p.protocol}` &&
        (ip === p.hostIP || ip === "0.0.0.0" || p.hostIP === "0.0.0.0")
      );
    });
    if (clash)
      throw new KindlingError(
        `-p ${spec}: host port ${p.hostPort}/${p.protocol} is already published by -p ${clash[1]}`,
      );
    seen.set(key, spec);
  });
  return out;
}
