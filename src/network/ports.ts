/** `-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`, checked and turned into CNI portMappings. */
import dgram from "node:dgram";
import net, { isIPv4 } from "node:net";
import { KindlingError } from "../util/errors.js";
import { exec } from "../util/exec.js";
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

/**
 * Refuses a `-p` whose host port is taken, before anything is made: by a process on the host (bound
 * now: tried with a bind of our own, released at once) or by another container's published port
 * (portmap DNATs without binding, so only its rules tell; the first rule would win and this run's
 * port would silently not reach it). Docker refuses both ("port is already allocated").
 */
export async function checkHostPortsFree(ports: PortMapping[]): Promise<void> {
  if (ports.length === 0) return;
  const published = await publishedPorts();
  for (const p of ports) {
    const what = `-p ${p.hostIP === "0.0.0.0" ? "" : `${p.hostIP}:`}${p.hostPort}:${p.containerPort}/${p.protocol}`;
    if (published.has(`${p.hostPort}/${p.protocol}`)) {
      throw new KindlingError(
        `${what}: host port ${p.hostPort}/${p.protocol} is already published by a container`,
      );
    }
    const err = await tryBind(p);
    if (err === "EADDRINUSE") {
      throw new KindlingError(`${what}: host port ${p.hostIP}:${p.hostPort}/${p.protocol} is already in use`);
    }
    if (err === "EADDRNOTAVAIL") {
      throw new KindlingError(`${what}: ${p.hostIP} is not an address of this host`);
    }
  }
}

/** Binds the port and lets it go; the error code if that failed. */
function tryBind(p: PortMapping): Promise<string | undefined> {
  return new Promise((resolve) => {
    const done = (err?: NodeJS.ErrnoException) => resolve(err?.code ?? (err ? String(err) : undefined));
    if (p.protocol === "udp") {
      const s = dgram.createSocket("udp4");
      s.once("error", (err) => {
        s.close();
        done(err);
      });
      s.bind({ port: p.hostPort, address: p.hostIP, exclusive: true }, () => s.close(() => done()));
      return;
    }
    const s = net.createServer();
    s.once("error", done);
    s.listen({ port: p.hostPort, host: p.hostIP, exclusive: true }, () => s.close(() => done()));
  });
}

/** "PORT/proto" of every host port a CNI portmap rule (any network's) DNATs now. */
async function publishedPorts(): Promise<Set<string>> {
  const r = await exec("iptables", ["-w", "5", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT"], {
    allowFailure: true,
  });
  const out = new Set<string>();
  for (const line of r.stdout.split("\n")) {
    const proto = / -p (tcp|udp) /.exec(line)?.[1];
    const dports = / --dports (\S+)/.exec(line)?.[1];
    if (!proto || !dports) continue;
    for (const d of dports.split(",")) {
      const [a, b = a] = d.split(":").map(Number);
      for (let port = a!; port <= b! && port - a! < 65536; port++) out.add(`${port}/${proto}`);
    }
  }
  return out;
}
