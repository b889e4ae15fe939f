import { encodeBytes } from "../../util/bytestring.js";
/**
 * The agent wire format, version 3 (docs/guest.md is the reference; guest/init.c the other side).
 * A frame: u32 payload length, u8 version, u8 type, u16 flags (0), u32 id, payload. Little-endian.
 */
import { KindlingError } from "../../util/errors.js";
import type { ProcessSpec } from "../spec.js";

/**
 * 2: START carries the supplementary groups; 3: NETWORK (eth0 and resolv.conf), and FAILED carries the
 * step that failed (StartStep); 4: START's flag 2 (a pty, its rows and cols after env) and RESIZE.
 * Host and guest ship together; a mismatch is refused.
 */
export const PROTOCOL_VERSION = 4;
export const HEADER_LENGTH = 12;
export const MAX_PAYLOAD = 1 << 20;
/** Initial credit per output stream, and the host's stdin window. */
export const OUTPUT_WINDOW = 256 * 1024;
export const STDIN_WINDOW = 256 * 1024;
/** Largest data chunk the host puts in one STDIN frame. */
export const CHUNK = 64 * 1024;
/** Most supplementary groups a START may carry (the guest refuses more too). */
export const MAX_GROUPS = 64;

export const MsgType = {
  READY: 0x01,
  CONFIGURE: 0x10,
  CONFIGURED: 0x11,
  /** eth0 (MAC, address, route, MTU) and /etc/resolv.conf; answered by CONFIGURED. */
  NETWORK: 0x12,
  /**
   * A snapshot VM's per-container boot (kindling.snapshot=1): clock, entropy, its kindling.* root options;
   * answered by CONFIGURED once the root and overlay are mounted. Sent first after a restore.
   */
  SETUP: 0x13,
  START: 0x20,
  STARTED: 0x21,
  STDOUT: 0x22,
  STDERR: 0x23,
  STDIN_CREDIT: 0x24,
  EXITED: 0x25,
  STDIN: 0x26,
  STDIN_EOF: 0x27,
  SIGNAL: 0x28,
  OUTPUT_CREDIT: 0x29,
  /** A tty process's new window size: u32 rows, u32 cols (the guest sets it on the pty: SIGWINCH). */
  RESIZE: 0x2a,
  FAILED: 0x2f,
  POWEROFF: 0x30,
} as const;
export type MsgType = (typeof MsgType)[keyof typeof MsgType];

/** FAILED's last field: where a START failed. `none`: before the child ran (fork, pipes, a refused START). */
export const StartStep = { none: 0, stdio: 1, chdir: 2, credentials: 3, exec: 4 } as const;
export type StartStep = keyof typeof StartStep;

export function startStepName(n: number): StartStep {
  return (Object.keys(StartStep) as StartStep[]).find((k) => StartStep[k] === n) ?? "none";
}

export interface Frame {
  type: number;
  id: number;
  payload: Buffer;
}

/** Bytes or text; text is UTF-8 encoded. Any bytes are carried intact (the guest refuses NUL in args/env). */
export type Bytes = string | Buffer;

/** bind: source is a path in the guest (e.g. a subdir of a packed mounts drive); detach: lazy-unmount target, remove it. */
export const MountKind = { block: 1, virtiofs: 2, tmpfs: 3, bind: 4, detach: 5 } as const;

export interface GuestMount {
  kind: keyof typeof MountKind;
  /** /dev/vdX for block, the tag for virtiofs, a guest path for bind, ignored for tmpfs and detach */
  source: string;
  /** absolute path inside the container's root; created if missing */
  target: string;
  /** block: ext4, squashfs or auto */
  fstype?: string;
  /** the mount data string, e.g. "size=64m" */
  options?: string;
  readOnly?: boolean;
}

/** What the guest sets up before the first process: sent in CONFIGURE. */
export interface GuestConfig {
  hostname?: string;
  mounts?: GuestMount[];
}

/** The guest's network, sent in NETWORK before CONFIGURE: no DHCP in the guest. */
export interface GuestNetwork {
  /** The NIC the VMM gave the guest, found by its MAC; absent: loopback only. */
  iface?: { mac: string; address: string; prefixLength: number; gateway?: string; mtu: number };
  /** /etc/resolv.conf for the container; empty or absent: the image's stays. */
  resolvConf?: string;
}

/** What SETUP carries. */
export interface GuestSetup {
  /** the host's CLOCK_REALTIME, ns since the epoch: the guest's clock is the snapshot's until set */
  realtimeNs: bigint;
  /** fresh random bytes the guest credits to its RNG before a reseed (at most 256) */
  seed: Buffer;
  /** kindling.* boot options of this container (kindling.root=..., kindling.tmpfs_size=...) */
  options: string[];
}

export function encodeSetup(s: GuestSetup): Buffer {
  if (s.seed.length > 256) throw new KindlingError("SETUP seed is at most 256 bytes");
  const sec = s.realtimeNs / 1_000_000_000n;
  const nsec = Number(s.realtimeNs % 1_000_000_000n);
  const head = new PayloadWriter()
    .u32(Number(sec & 0xffffffffn))
    .u32(Number(sec >> 32n))
    .u32(nsec)
    .u32(s.seed.length)
    .done();
  return Buffer.concat([head, s.seed, new PayloadWriter().bytes(s.options.join(" ")).done()]);
}

export function encodeNetwork(n: GuestNetwork): Buffer {
  const i = n.iface;
  if (i && !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(i.mac))
    throw new KindlingError(`not a MAC address: ${i.mac}`);
  return new PayloadWriter()
    .u32(i ? 1 : 0)
    .bytes(i?.mac ?? "")
    .bytes(i?.address ?? "")
    .u32(i?.prefixLength ?? 0)
    .bytes(i?.gateway ?? "")
    .u32(i?.mtu ?? 0)
    .bytes(n.resolvConf ?? "")
    .done();
}

/** NETWORK's payload read back (tests and test doubles). */
export function decodeNetwork(payload: Buffer): GuestNetwork {
  const r = new PayloadReader(payload);
  const has = (r.u32() & 1) === 1;
  const mac = r.bytes().toString();
  const address = r.bytes().toString();
  const prefixLength = r.u32();
  const gateway = r.bytes().toString();
  const mtu = r.u32();
  const resolvConf = r.bytes().toString();
  r.end();
  return {
    ...(has ? { iface: { mac, address, prefixLength, ...(gateway ? { gateway } : {}), mtu } } : {}),
    ...(resolvConf ? { resolvConf } : {}),
  };
}

/** What START carries: a ProcessSpec whose strings may be raw bytes. */
export type StartSpec = ProcessSpec<Bytes>;

export function encodeFrame(type: number, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD)
    throw new KindlingError(`agent message too large (${payload.length} bytes)`);
  const header = Buffer.alloc(HEADER_LENGTH);
  header.writeUInt32LE(payload.length, 0);
  header.writeUInt8(PROTOCOL_VERSION, 4);
  header.writeUInt8(type, 5);
  header.writeUInt16LE(0, 6);
  header.writeUInt32LE(id >>> 0, 8);
  return Buffer.concat([header, payload]);
}

/** Builds a payload of u32s and length-prefixed byte strings. */
export class PayloadWriter {
  private readonly parts: Buffer[] = [];
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    this.parts.push(b);
    return this;
  }
  bytes(v: Bytes): this {
    // encodeBytes: a byte the CLI carried as an escape (not UTF-8) goes to the guest as itself
    const b = typeof v === "string" ? encodeBytes(v) : v;
    this.u32(b.length);
    this.parts.push(b);
    return this;
  }
  list(vs: Bytes[]): this {
    this.u32(vs.length);
    for (const v of vs) this.bytes(v);
    return this;
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

export class PayloadReader {
  private off = 0;
  constructor(private readonly buf: Buffer) {}
  u32(): number {
    if (this.off + 4 > this.buf.length) throw new KindlingError("agent: truncated message");
    const v = this.buf.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }
  bytes(): Buffer {
    const n = this.u32();
    if (this.off + n > this.buf.length) throw new KindlingError("agent: truncated message");
    const v = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }
  /** Throws if bytes are left over (a payload longer than its layout). */
  end(): void {
    if (this.off !== this.buf.length) throw new KindlingError("agent: trailing bytes in message");
  }
}

/** Incremental frame parser: feed it chunks of the stream, get whole frames back. */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);
  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const frames: Frame[] = [];
    let off = 0;
    while (this.buf.length - off >= HEADER_LENGTH) {
      const len = this.buf.readUInt32LE(off);
      const version = this.buf.readUInt8(off + 4);
      if (version !== PROTOCOL_VERSION)
        throw new KindlingError(`agent: unsupported protocol version ${version}`);
      if (len > MAX_PAYLOAD) throw new KindlingError(`agent: message of ${len} bytes exceeds the limit`);
      if (this.buf.length - off < HEADER_LENGTH + len) break;
      frames.push({
        type: this.buf.readUInt8(off + 5),
        id: this.buf.readUInt32LE(off + 8),
        // copy: the frame outlives this buffer
        payload: Buffer.from(this.buf.subarray(off + HEADER_LENGTH, off + HEADER_LENGTH + len)),
      });
      off += HEADER_LENGTH + len;
    }
    this.buf = this.buf.subarray(off);
    return frames;
  }
}

export function encodeConfigure(cfg: GuestConfig): Buffer {
  const w = new PayloadWriter().bytes(cfg.hostname ?? "");
  const mounts = cfg.mounts ?? [];
  w.u32(mounts.length);
  for (const m of mounts) {
    if (!m.target.startsWith("/")) throw new KindlingError(`mount target must be absolute: ${m.target}`);
    w.u32(MountKind[m.kind])
      .bytes(m.source)
      .bytes(m.target)
      .bytes(m.fstype ?? (m.kind === "block" ? "auto" : ""))
      .bytes(m.options ?? "")
      .u32(m.readOnly ? 1 : 0);
  }
  return w.done();
}

function checkId(what: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xfffffffe)
    throw new KindlingError(`${what} ${v} is not a valid id`);
  return v;
}

/** A pty's size in characters (START with a tty, RESIZE). */
export interface TtySize {
  rows: number;
  cols: number;
}

export function encodeResize(size: TtySize): Buffer {
  return new PayloadWriter().u32(size.rows).u32(size.cols).done();
}

/** START: flags (1: stdin is a pipe the host feeds; 2: a pty of `tty`'s size), the process, [rows, cols]. */
export function encodeStart(p: StartSpec, stdinPipe: boolean, tty?: TtySize): Buffer {
  if (p.args.length === 0) throw new KindlingError("no command to run");
  const groups = p.additionalGids ?? [];
  if (groups.length > MAX_GROUPS)
    throw new KindlingError(`too many supplementary groups (${groups.length}; at most ${MAX_GROUPS})`);
  const w = new PayloadWriter()
    .u32((stdinPipe ? 1 : 0) | (tty ? 2 : 0))
    .u32(checkId("uid", p.uid ?? 0))
    .u32(checkId("gid", p.gid ?? 0))
    .u32(groups.length);
  for (const g of groups) w.u32(checkId("group", g));
  w.bytes(p.cwd ?? "")
    .list(p.args)
    .list(p.env ?? []);
  if (tty) w.u32(tty.rows).u32(tty.cols);
  return w.done();
}

/** START's payload read back (the guest's side of encodeStart; used by tests and test doubles). */
export function decodeStart(payload: Buffer): {
  stdinPipe: boolean;
  tty?: TtySize;
  spec: StartSpec & { cwd: Buffer };
} {
  const r = new PayloadReader(payload);
  const flags = r.u32();
  const stdinPipe = (flags & 1) === 1;
  const uid = r.u32();
  const gid = r.u32();
  const n = r.u32();
  if (n > MAX_GROUPS) throw new KindlingError(`agent: too many supplementary groups (${n})`);
  const additionalGids = Array.from({ length: n }, () => r.u32());
  const cwd = r.bytes();
  const list = () => Array.from({ length: r.u32() }, () => r.bytes());
  const args = list();
  const env = list();
  const tty = flags & 2 ? { rows: r.u32(), cols: r.u32() } : undefined;
  r.end();
  return { stdinPipe, ...(tty ? { tty } : {}), spec: { args, env, cwd, uid, gid, additionalGids } };
}
