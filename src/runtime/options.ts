import { realpath } from "node:fs/promises";
import { availableParallelism } from "node:os";
import path from "node:path";
import { hostEnv } from "../config/index.js";
import { checkHostPortsFree, parsePublishFlags } from "../network/ports.js";
import { parseDnsFlags } from "../network/resolv.js";
import { NETWORK_MODES, type NetworkMode } from "../network/types.js";
import { KindlingError } from "../util/errors.js";
import {
  ROOTFS_STRATEGIES,
  type RootfsStrategy,
  RUNTIME_NAMES,
  type RunOptions,
  type UserSpec,
  type VolumeSpec,
} from "./types.js";
import { parseSize } from "./vm-rootfs/images.js";

/** The `kindling run` flags as commander hands them over: strings, unchecked. */
export interface RawRunFlags {
  runtime?: string;
  rootfs?: string;
  volume?: string[];
  env?: string[];
  workdir?: string;
  user?: string;
  memory?: string;
  cpus?: string;
  timeout?: string;
  stopTimeout?: string;
  hostname?: string;
  entrypoint?: string;
  interactive?: boolean;
  /** `-t`: a pseudo-terminal for the process. */
  tty?: boolean;
  /** VM runtimes: sparse ext4 scratch drive for the writable layer, e.g. 2G. */
  disk?: string;
  /** VM runtimes: pack | per-mount. */
  mountPacking?: string;
  /** bridge | none | host */
  network?: string;
  /** -p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], repeatable */
  publish?: string[];
  /** --dns IP, repeatable */
  dns?: string[];
  /** QEMU: the guest agent's channel, vsock | serial. */
  agent?: string;
}

export const DEFAULT_STOP_GRACE_SECONDS = 10;

/** Checks every flag and returns RunOptions, or throws a KindlingError naming the bad flag. */
export async function parseRunOptions(
  image: string,
  command: string[],
  flags: RawRunFlags,
  host: Readonly<Record<string, string | undefined>> = hostEnv(),
  /** Where relative -v sources are (the client's working directory when a service parses them). */
  cwd: string = process.cwd(),
): Promise<RunOptions> {
  if (!image) throw new KindlingError("run: an IMAGE is required");
  const volumes: VolumeSpec[] = [];
  for (const v of flags.volume ?? []) volumes.push(await parseVolume(v, cwd));
  const seen = new Set<string>();
  for (const v of volumes) {
    if (seen.has(v.destination)) throw new KindlingError(`-v: ${v.destination} is mounted twice`);
    seen.add(v.destination);
  }
  // auto (the default) stays auto: the runtime decides when the run starts (pickDefaultVmm), since
  // that probes the host; it is always a VM runtime.
  const runtime = oneOf("--runtime", flags.runtime ?? "auto", [
    ...RUNTIME_NAMES,
    "auto",
  ]) as RunOptions["runtime"];
  const vm = runtime === "qemu" || runtime === "firecracker" || runtime === "auto";
  if (!vm && flags.disk !== undefined)
    throw new KindlingError(`--disk applies to VM runtimes (qemu, firecracker)`);
  if (!vm && flags.mountPacking !== undefined) {
    throw new KindlingError(`--mount-packing applies to VM runtimes (qemu, firecracker)`);
  }
  const network = oneOf("--network", flags.network ?? "bridge", NETWORK_MODES) as NetworkMode;
  if (vm && network === "host") {
    throw new KindlingError(
      `--network host applies to runc and runsc only: --runtime ${runtime} runs a microVM, with its own kernel and network stack (use bridge or none)`,
    );
  }
  const publish = parsePublishFlags(flags.publish ?? []);
  if (publish.length > 0 && network !== "bridge") {
    throw new KindlingError(`-p needs --network bridge (got --network ${network})`);
  }
  await checkHostPortsFree(publish);
  const agent =
    flags.agent === undefined
      ? undefined
      : (oneOf("--agent", flags.agent, ["vsock", "serial"]) as "vsock" | "serial");
  if (agent !== undefined && !vm)
    throw new KindlingError(`--agent applies to VM runtimes (qemu, firecracker)`);
  if (agent === "serial" && runtime === "firecracker")
    throw new KindlingError("--agent serial: Firecracker has no virtio-serial; its agent always uses vsock");
  return {
    runtime,
    network,
    publish,
    dns: parseDnsFlags(flags.dns ?? []),
    rootfs: oneOf("--rootfs", flags.rootfs ?? "lazy", ROOTFS_STRATEGIES) as RootfsStrategy,
    image,
    command,
    entrypoint: flags.entrypoint === undefined ? undefined : parseEntrypoint(flags.entrypoint),
    volumes,
    env: (flags.env ?? []).flatMap((e) => parseEnv(e, host)),
    workdir: flags.workdir === undefined ? undefined : containerPath("-w", flags.workdir),
    user: flags.user === undefined ? undefined : parseUserFlag(flags.user),
    memoryMiB: flags.memory === undefined ? undefined : parseMemory(flags.memory),
    cpus: flags.cpus === undefined ? undefined : parseCpus(flags.cpus),
    timeoutSeconds: flags.timeout === undefined ? undefined : seconds("--timeout", flags.timeout),
    stopGraceSeconds:
      flags.stopTimeout === undefined
        ? DEFAULT_STOP_GRACE_SECONDS
        : seconds("--stop-timeout", flags.stopTimeout, true),
    hostname: flags.hostname === undefined ? undefined : parseHostname(flags.hostname),
    interactive: flags.interactive ?? false,
    ...(flags.tty ? { tty: true } : {}),
    ...(flags.disk === undefined ? {} : { diskBytes: parseDisk(flags.disk) }),
    ...(agent === undefined ? {} : { agent }),
    ...(flags.mountPacking === undefined
      ? {}
      : {
          mountPacking: oneOf("--mount-packing", flags.mountPacking, ["pack", "per-mount"]) as
            | "pack"
            | "per-mount",
        }),
  };
}

function oneOf(flag: string, value: string, allowed: readonly string[]): string {
  if (!allowed.includes(value)) {
    throw new KindlingError(`${flag}: unknown value "${value}" (expected one of: ${allowed.join(", ")})`);
  }
  return value;
}

/** `SRC:DST[:ro|rw]`. SRC must exist: a missing SRC is a typo more often than a wish to create it. */
export async function parseVolume(spec: string, cwd: string = process.cwd()): Promise<VolumeSpec> {
  const parts = spec.split(":");
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === "")) {
    throw new KindlingError(`-v ${spec}: expected SRC:DST or SRC:DST:ro (paths may not contain ":")`);
  }
  const [src, dst, mode = "rw"] = parts;
  if (mode !== "ro" && mode !== "rw") {
    throw new KindlingError(`-v ${spec}: unknown mode "${mode}" (expected ro or rw)`);
  }
  // A bare name would be a named volume in Docker; Kindling has none, so say so instead of guessing.
  if (!path.isAbsolute(src) && !src.startsWith(".")) {
    throw new KindlingError(`-v ${spec}: SRC must be a host path (absolute, or relative starting with ".")`);
  }
  // Symlinks resolved here, once, for every runtime: runc's bind mount follows them, so a VM's
  // copy and sync-back must use the target too (else sync-back replaces the link with a file).
  let source: string;
  try {
    source = await realpath(path.resolve(cwd, src));
  } catch {
    throw new KindlingError(`-v ${spec}: source ${path.resolve(cwd, src)} does not exist`);
  }
  const destination = containerPath(`-v ${spec}: DST`, dst);
  if (destination === "/") throw new KindlingError(`-v ${spec}: DST cannot be /`);
  return { source, destination, readOnly: mode === "ro" };
}

/** An absolute path inside the container, normalized; ".." may not climb out of it. */
function containerPath(what: string, p: string): string {
  if (!p.startsWith("/")) throw new KindlingError(`${what} must be an absolute path, got "${p}"`);
  if (p.includes("\0")) throw new KindlingError(`${what} contains a NUL byte`);
  return path.posix.normalize(p).replace(/(.)\/+$/, "$1");
}

/** `K=V` as given; `K` alone takes K from kindling's environment and is dropped if unset (Docker does so). */
export function parseEnv(e: string, hostEnv: Readonly<Record<string, string | undefined>>): string[] {
  const eq = e.indexOf("=");
  const key = eq < 0 ? e : e.slice(0, eq);
  if (!/^[^=\0\s]+$/.test(key)) throw new KindlingError(`-e ${e}: expected K=V with a non-empty name K`);
  if (eq >= 0) return [e];
  const v = hostEnv[key];
  return v === undefined ? [] : [`${key}=${v}`];
}

/** `-u UID[:GID]`; names (as in an image's USER) are accepted and resolved in the image later. */
export function parseUserFlag(u: string): UserSpec {
  const m = /^([^:\s]+)(?::([^:\s]+))?$/.exec(u);
  if (!m) throw new KindlingError(`-u ${u}: expected UID[:GID]`);
  for (const part of [m[1], m[2]]) {
    if (part !== undefined && /^\d+$/.test(part) && Number(part) > 0xfffffffe) {
      throw new KindlingError(`-u ${u}: ${part} is out of range`);
    }
  }
  return { user: m[1], group: m[2] };
}

function parseMemory(s: string): number {
  if (!/^\d+$/.test(s) || Number(s) < 4) {
    throw new KindlingError(`--memory ${s}: expected a whole number of MiB, at least 4`);
  }
  return Number(s);
}

function parseCpus(s: string): number {
  const n = Number(s);
  if (!/^\d+(\.\d+)?$/.test(s) || !(n >= 0.01)) {
    throw new KindlingError(`--cpus ${s}: expected a number of CPUs such as 1 or 0.5`);
  }
  const max = availableParallelism();
  if (n > max) throw new KindlingError(`--cpus ${s}: this host has only ${max} CPUs`);
  return n;
}

function seconds(flag: string, s: string, zeroOk = false): number {
  const n = Number(s);
  if (!/^\d+(\.\d+)?$/.test(s) || !(zeroOk ? n >= 0 : n > 0)) {
    throw new KindlingError(`${flag} ${s}: expected a number of seconds${zeroOk ? "" : " above 0"}`);
  }
  return n;
}

/** RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens. */
function parseHostname(h: string): string {
  const label = /^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/;
  if (h.length > 253 || !h.split(".").every((l) => label.test(l))) {
    throw new KindlingError(`--hostname ${h}: not a valid host name`);
  }
  return h;
}

/** `--entrypoint` takes one program, or a JSON array for a program with arguments. */
function parseEntrypoint(s: string): string[] {
  if (s.startsWith("[")) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(s);
    } catch {
      throw new KindlingError(`--entrypoint ${s}: not a valid JSON array`);
    }
    if (!Array.isArray(parsed) || !parsed.every((x) => typeof x === "string")) {
      throw new KindlingError(`--entrypoint ${s}: expected a JSON array of strings`);
    }
    return parsed;
  }
  return s === "" ? [] : [s];
}

/** `--disk SIZE`: at least 16 MiB (ext4 with a journal), e.g. 512M or 2G. */
function parseDisk(s: string): number {
  const bytes = parseSize(s);
  if (bytes === undefined || bytes < 16 << 20) {
    throw new KindlingError(`--disk ${s}: expected a size of at least 16M, such as 512M or 2G`);
  }
  return bytes;
}
