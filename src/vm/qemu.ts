/**
 * QEMU `microvm` backend: renders a VmSpec into a command line, supervises QEMU (and virtiofsd,
 * vhost-device-vsock), connects the agent over vsock (Firecracker's hybrid vsock, through
 * vhost-device-vsock) or a virtio-serial chardev socket, and runs processes in the guest.
 */
import { type ChildProcess, type SpawnOptions, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, rm } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import type { Readable, Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { searchPath } from "../config/index.js";
import { writeFileAtomic } from "../util/atomic.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { AgentClient, type ProcessExit } from "./agent/client.js";
import type { GuestConfig, ProcessSpec } from "./agent/protocol.js";
import { firecrackerBootArgs } from "./firecracker/render.js";
import { VsockListener, vsockConnect } from "./firecracker/vsock.js";
import { ensureGuestKernel, tcgKernelParams } from "./kernel.js";
import type { VmSpec } from "./spec.js";

export const QEMU_BINARY = "qemu-system-x86_64";
export const VIRTIOFSD = "/usr/lib/qemu/virtiofsd";
/** rust-vmm's vhost-user vsock device (scripts/setup.sh builds it with cargo): Firecracker's hybrid vsock. */
export const VHOST_VSOCK = "vhost-device-vsock";
/** docs/guest.md: the guest agent connects to the host (CID 2) on this vsock port, as under Firecracker. */
export const AGENT_VSOCK_PORT = 1024;
/** docs/guest.md: with the vsock channel the guest accepts exec sessions here (kindling.exec_port). */
export const EXEC_VSOCK_PORT = 1025;
const GUEST_CID = 3;
/** sockaddr_un.sun_path holds 108 bytes including the NUL. */
const MAX_SOCKET_PATH = 107;
const DEFAULT_BOOT_TIMEOUT_MS = 60_000;

export type Accel = "kvm" | "tcg";

export interface QemuBootOptions {
  qemuBinary?: string;
  /** auto (default): KVM when a probe boot works on this host, else TCG */
  accel?: "auto" | Accel;
  /** deadline from spawn to the guest agent's READY */
  bootTimeoutMs?: number;
  /** for the cached KVM probe result; without it, auto means TCG unless /dev/kvm probes fine now */
  home?: KindlingHome;
  /**
   * The agent's channel: "vsock" (hybrid vsock through vhost-device-vsock, as under Firecracker) or
   * "virtio-serial" (default). The spec's cmdline must say the same (kindling.agent=).
   */
  agent?: AgentTransport;
  /** the vhost-device-vsock binary (default: on PATH) */
  vhostVsockBin?: string;
  /**
   * "firecracker": the guest sees what Firecracker gives it (docs/firecracker.md, "The Firecracker-shaped
   * QEMU profile"): virtio-mmio devices described only in ACPI, the serial console and an i8042 (for the
   * reset) as the only legacy devices, no RTC, Firecracker's boot arguments, a guest reboot ends the VM.
   * Use it with the vsock agent.
   */
  profile?: QemuProfile;
}

export type QemuProfile = "default" | "firecracker";

export type AgentTransport = "vsock" | "virtio-serial";

export interface QemuPaths {
  consoleLog: string;
  agentSocket: string;
  qmpSocket: string;
  /** virtiofsd socket per share tag */
  virtiofsSockets?: Map<string, string>;
  /** vhost-user socket of vhost-device-vsock: the agent goes over vsock instead of virtio-serial */
  vhostVsockSocket?: string;
  /** hybrid vsock's host socket (uds_path): CONNECT <port> here; the guest's connections arrive at <it>_<port> */
  vsockUds?: string;
}

/** The QEMU command line for a VmSpec (no side effects). */
export function qemuArgs(
  spec: VmSpec,
  paths: QemuPaths,
  accel: Accel,
  profile: QemuProfile = "default",
): string[] {
  const shares = spec.shares ?? [];
  const fc = profile === "firecracker";
  // rtc=on: with rtc=off the kernel spends seconds under TCG failing to read the CMOS clock at boot
  // (measured: ~3 s of a 5-6 s boot under load) and the guest's clock starts in 1970. The RTC driver
  // itself (cmos_init) is skipped by initcall_blacklist, which is where the saving DESIGN.md saw lies.
  // The Firecracker profile: no RTC (Firecracker has none on x86), devices only in ACPI's DSDT (no
  // virtio_mmio.device= on the command line), and an i8042 whose reset (reboot=k) QEMU turns into an exit.
  const machine = fc ? ["microvm", "rtc=off", "acpi=on", "auto-kernel-cmdline=off"] : ["microvm", "rtc=on"];
  const args = ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"];
  if (accel === "kvm") args.push("-accel", "kvm", "-cpu", "host");
  else args.push("-accel", "tcg", "-cpu", "max");
  args.push("-m", `${spec.memoryMiB}`, "-smp", `${spec.vcpus}`);
  if (shares.length > 0 || paths.vhostVsockSocket) {
    // vhost-user needs guest memory a second process can map, and modern virtio-mmio
    args.push("-object", `memory-backend-memfd,id=mem,size=${spec.memoryMiB}M,share=on`);
    machine.push("memory-backend=mem");
    args.push("-global", "virtio-mmio.force-legacy=false");
  }
  args.unshift("-M", machine.join(","));
  args.push("-chardev", `file,id=console,path=${paths.consoleLog}`, "-serial", "chardev:console");
  if (fc) args.push("-device", "i8042");
  args.push("-kernel", spec.kernelPath);
  if (spec.initrdPath) args.push("-initrd", spec.initrdPath);
  let cmdline = fc ? firecrackerBootArgs(spec.cmdline) : spec.cmdline;
  if (accel === "tcg" && !/\btsc_early_khz=/.test(cmdline))
    cmdline = `${cmdline} ${tcgKernelParams().join(" ")}`;
  args.push("-append", cmdline.trim());
  // the root drive first: the guest names block devices in device order (vda, vdb, ...)
  const drives = [...spec.drives].sort((a, b) => Number(b.isRoot) - Number(a.isRoot));
  for (const [i, d] of drives.entries()) {
    const id = `drive${i}`;
    const file = d.path.replace(/,/g, ",,");
    args.push("-drive", `id=${id},file=${file},format=raw,if=none,read-only=${d.readOnly ? "on" : "off"}`);
    args.push("-device", `virtio-blk-device,drive=${id}`);
  }
  if (spec.network) {
    // the TAP is opened by name in the namespace QEMU runs in (spawnTied's nsenter); no ifup scripts
    const n = spec.network;
    args.push("-netdev", `tap,id=net0,ifname=${n.tap},script=no,downscript=no`);
    args.push("-device", `virtio-net-device,netdev=net0,mac=${n.mac},host_mtu=${n.mtu}`);
  }
  if (paths.vhostVsockSocket) {
    args.push("-chardev", `socket,id=vsock,path=${paths.vhostVsockSocket}`);
    args.push("-device", "vhost-user-vsock-device,chardev=vsock");
  } else {
    args.push("-device", "virtio-serial-device,max_ports=2");
    args.push("-chardev", `socket,id=agent,path=${paths.agentSocket},server=on,wait=off`);
    args.push("-device", "virtserialport,chardev=agent,name=kindling.agent");
  }
  for (const [i, s] of shares.entries()) {
    const sock = paths.virtiofsSockets?.get(s.tag);
    if (!sock) throw new Error(`no virtiofsd socket for share ${s.tag}`);
    args.push("-chardev", `socket,id=fs${i},path=${sock}`);
    args.push("-device", `vhost-user-fs-device,chardev=fs${i},tag=${s.tag}`);
  }
  args.push("-qmp", `unix:${paths.qmpSocket},server=on,wait=off`);
  return args;
}

const SETPRIV = "/usr/bin/setpriv";

/**
 * Spawns a VMM-side process that dies with us: through `setpriv --pdeathsig KILL` (which then execs it,
 * keeping the pid) when available, so even a SIGKILLed Node leaves no QEMU or virtiofsd behind.
 */
function spawnTied(cmd: string, args: string[], opts: SpawnOptions, netns?: string): ChildProcess {
  // in a network namespace: nsenter execs the VMM (same pid), after setpriv set the death signal
  const argv = netns ? ["nsenter", `--net=${netns}`, "--", cmd, ...args] : [cmd, ...args];
  if (!existsSync(SETPRIV)) return spawn(argv[0]!, argv.slice(1), opts);
  return spawn(SETPRIV, ["--pdeathsig", "KILL", "--", ...argv], opts);
}

function onPath(cmd: string): boolean {
  if (cmd.includes("/")) return existsSync(cmd);
  return searchPath("/usr/bin:/bin").some((d) => existsSync(path.join(d, cmd)));
}

/** Live QEMU/virtiofsd processes: killed if Node exits without closing them. */
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on("exit", () => {
      for (const c of liveChildren) c.kill("SIGKILL");
    });
  }
  liveChildren.add(child);
  child.once("exit", () => liveChildren.delete(child));
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A running QEMU microvm with its agent connected. */
export class QemuVm {
  /** spawn -> guest READY, in ms */
  bootMs = 0;
  private readonly exitPromise: Promise<VmExit>;
  private exitInfo?: VmExit;
  private closing?: Promise<void>;
  agent!: AgentClient;
  /** Why a helper process (vhost-device-vsock) ended the VM, if one did. */
  helperFailure?: string;
  /** The hybrid vsock's listener for guest-initiated connections (agent transport "vsock"). */
  vsockListener?: VsockListener;

  constructor(
    readonly child: ChildProcess,
    readonly accel: Accel,
    readonly paths: QemuPaths,
    private readonly helpers: ChildProcess[],
    private readonly ownsStateFiles: string[],
  ) {
    this.exitPromise = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  get exited(): boolean {
    return this.exitInfo !== undefined;
  }

  get isClosing(): boolean {
    return this.closing !== undefined;
  }

  /** The agent's channel in this VM. */
  get transport(): AgentTransport {
    return this.paths.vsockUds ? "vsock" : "virtio-serial";
  }

  /**
   * A host-initiated vsock connection to a port the guest listens on: `CONNECT <port>` on the hybrid vsock
   * socket, exactly as under Firecracker (src/vm/firecracker/vsock.ts). Only with the vsock transport.
   */
  connect(port: number, timeoutMs = 10_000): Promise<net.Socket> {
    if (!this.paths.vsockUds)
      throw new KindlingError("this VM has no vsock device (agent transport virtio-serial)");
    return vsockConnect(this.paths.vsockUds, port, { timeoutMs });
  }

  /** Resolves when QEMU has exited. */
  wait(): Promise<VmExit> {
    return this.exitPromise;
  }

  /** The last lines of the guest console. */
  async consoleTail(lines = 20): Promise<string> {
    const text = await readFile(this.paths.consoleLog, "latin1").catch(() => "");
    return text.replace(/\r/g, "").trimEnd().split("\n").slice(-lines).join("\n");
  }

  /** The console's "Kernel panic - ..." line, if the guest kernel panicked (its trace follows it). */
  async panicLine(): Promise<string | undefined> {
    const text = await readFile(this.paths.consoleLog, "latin1").catch(() => "");
    return /Kernel panic[^\r\n]*/.exec(text)?.[0];
  }

  /**
   * A second agent session over a host-initiated vsock connection (CONNECT 1025): its own READY, START,
   * output and exit statuses, independent of the first channel. Closing it kills its processes only.
   */
  async openSession(timeoutMs = 10_000): Promise<AgentClient> {
    const sock = await this.connect(EXEC_VSOCK_PORT, timeoutMs);
    const session = new AgentClient(sock);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        session.ready(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new KindlingError(`no READY on the exec session within ${timeoutMs} ms`)),
            timeoutMs,
          );
        }),
      ]);
      return session;
    } catch (err) {
      session.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Kills QEMU at once (SIGKILL) and waits for it. */
  async kill(): Promise<void> {
    if (!this.exited) this.child.kill("SIGKILL");
    await this.wait();
  }

  /** One QMP command (a fresh connection each time: QMP is rarely used here). */
  async qmp(command: string, args?: Record<string, unknown>): Promise<unknown> {
    return qmpCommand(this.paths.qmpSocket, command, args);
  }

  /**
   * Stops the VM and releases everything: the guest powers off (agent), else QMP quit, else SIGKILL;
   * then virtiofsd and the sockets. Always leaves no process behind. Safe to call more than once.
   */
  close(graceMs = 3000): Promise<void> {
    this.closing ??= (async () => {
      if (!this.exited && this.agent?.isReady) {
        this.agent.powerOff();
        await Promise.race([this.wait(), sleep(graceMs, undefined, { ref: false })]);
      }
      if (!this.exited) {
        await Promise.race([this.qmp("quit").catch(() => {}), sleep(500, undefined, { ref: false })]);
        await Promise.race([this.wait(), sleep(1000, undefined, { ref: false })]);
      }
      await this.kill();
      this.agent?.close();
      await this.vsockListener?.close();
      for (const h of this.helpers) {
        if (h.exitCode === null && h.signalCode === null) {
          h.kill("SIGKILL");
          await new Promise((r) => h.once("exit", r));
        }
      }
      for (const f of this.ownsStateFiles) await rm(f, { force: true });
    })();
    return this.closing;
  }
}

async function qmpCommand(
  socketPath: string,
  command: string,
  args?: Record<string, unknown>,
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(socketPath);
    let buf = "";
    let stage = 0;
    sock.setTimeout(5000, () => sock.destroy(new Error("QMP timeout")));
    sock.on("error", reject);
    sock.on("close", () => reject(new Error("QMP connection closed")));
    sock.on("data", (d) => {
      buf += d.toString();
      let nl = buf.indexOf("\n");
      while (nl >= 0) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        nl = buf.indexOf("\n");
        if (msg.event) continue;
        if (stage === 0 && msg.QMP) {
          stage = 1;
          sock.write(`${JSON.stringify({ execute: "qmp_capabilities" })}\n`);
        } else if (stage === 1 && "return" in msg) {
          stage = 2;
          sock.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) })}\n`);
        } else if (stage === 2) {
          sock.end();
          if (msg.error) reject(new Error(`QMP ${command}: ${msg.error.desc}`));
          else resolve(msg.return);
        }
      }
    });
  });
}

/** A Unix socket path short enough for sun_path (108 bytes), via /proc/<pid>/cwd when the real one is not. */
function connectablePath(absPath: string, child: ChildProcess): string {
  if (Buffer.byteLength(absPath) < 100) return absPath;
  return `/proc/${child.pid}/cwd/${path.basename(absPath)}`;
}

async function connectWhenListening(
  sockPath: string,
  child: ChildProcess,
  deadline: number,
): Promise<net.Socket> {
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error("VMM exited");
    if (Date.now() > deadline) throw new Error("timed out connecting to the VMM");
    const sock = await new Promise<net.Socket | null>((resolve) => {
      const s = net.connect(sockPath);
      s.once("connect", () => resolve(s));
      s.once("error", () => resolve(null));
    });
    if (sock) return sock;
    await sleep(10);
  }
}

/** KVM when /dev/kvm exists and a probe boot of the guest kernel under it gets as far as the kernel's banner. */
export async function chooseAccel(opts: QemuBootOptions): Promise<Accel> {
  if (opts.accel && opts.accel !== "auto") return opts.accel;
  if (!existsSync("/dev/kvm")) return "tcg";
  const bootId = (await readFile("/proc/sys/kernel/random/boot_id", "utf8").catch(() => "")).trim();
  const cacheFile = opts.home ? path.join(opts.home.kernel, "accel-probe.json") : undefined;
  if (cacheFile) {
    const cached = await readFile(cacheFile, "utf8")
      .then((t) => JSON.parse(t) as { bootId: string; accel: Accel })
      .catch(() => null);
    if (cached?.bootId === bootId) return cached.accel;
  }
  const accel = opts.home ? await probeKvm(opts) : "tcg";
  if (cacheFile) await writeFileAtomic(cacheFile, JSON.stringify({ bootId, accel })).catch(() => {});
  return accel;
}

async function probeKvm(opts: QemuBootOptions): Promise<Accel> {
  const kernel = await ensureGuestKernel(opts.home!);
  const args = ["-M", "microvm,rtc=on", "-accel", "kvm", "-cpu", "host", "-m", "128", "-nodefaults"];
  args.push("-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio", "-kernel", kernel.vmlinux);
  // no init anywhere: the kernel panics right after booting and panic=-1 ends QEMU
  args.push("-append", "console=ttyS0 panic=-1 reboot=t rdinit=/nonexistent root=/dev/null");
  const child = spawnTied(opts.qemuBinary ?? QEMU_BINARY, args, { stdio: ["ignore", "pipe", "pipe"] });
  track(child);
  let out = "";
  child.stdout!.on("data", (d) => {
    out += d.toString();
  });
  child.on("error", () => {});
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await new Promise((r) => child.once("close", r));
  clearTimeout(timer);
  return /Kernel panic|Linux version/.test(out) ? "kvm" : "tcg";
}

async function startVirtiofsd(source: string, socketPath: string, deadline: number): Promise<ChildProcess> {
  if (!existsSync(VIRTIOFSD)) throw new KindlingError(`${VIRTIOFSD} is missing (install qemu-system-common)`);
  // relative socket path from the state dir: sun_path holds only 108 bytes
  const child = spawnTied(
    VIRTIOFSD,
    [
      `--socket-path=${path.basename(socketPath)}`,
      "-o",
      `source=${path.resolve(source)}`,
      "-o",
      "cache=auto",
    ],
    { cwd: path.dirname(socketPath), stdio: ["ignore", "ignore", "pipe"] },
  );
  track(child);
  let err = "";
  child.stderr!.on("data", (d) => {
    err = (err + d.toString()).slice(-2000);
  });
  while (!existsSync(socketPath)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new KindlingError(`virtiofsd for ${source} did not start: ${err.trim()}`);
    }
    await sleep(10);
  }
  return child;
}

/**
 * Starts vhost-device-vsock for one VM: the vhost-user socket QEMU connects to, and the hybrid vsock's
 * uds_path. Runs in the state dir with relative paths (sun_path is short). Resolves once QEMU can connect.
 */
async function startVhostVsock(
  bin: string,
  paths: { vhostVsockSocket: string; vsockUds: string },
  deadline: number,
): Promise<ChildProcess> {
  if (!onPath(bin)) {
    throw new KindlingError(
      `${bin} is not installed (scripts/setup.sh builds it with cargo); use --agent serial, see \`kindling doctor\``,
    );
  }
  const dir = path.dirname(paths.vhostVsockSocket);
  const vm = `guest-cid=${GUEST_CID},socket=${path.basename(paths.vhostVsockSocket)},uds-path=${path.basename(paths.vsockUds)}`;
  const child = spawnTied(bin, ["--vm", vm], { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  track(child);
  let err = "";
  child.stderr!.on("data", (d) => {
    err = (err + d.toString()).slice(-2000);
  });
  child.on("error", (e) => {
    err += e.message;
  });
  while (!existsSync(paths.vhostVsockSocket)) {
    if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new KindlingError(`${bin} did not start: ${err.trim() || "no socket before the deadline"}`);
    }
    await sleep(10);
  }
  (child as ChildProcess & { stderrTail?: () => string }).stderrTail = () => err.trim();
  return child;
}

/** The guest's first connection to <uds>_<agent port>, or an error when QEMU exits or the deadline passes. */
async function acceptAgent(
  listener: VsockListener,
  child: ChildProcess,
  deadline: number,
): Promise<net.Socket> {
  const ac = new AbortController();
  const timer = setTimeout(
    () => ac.abort(new Error(`the guest did not connect to the host over vsock port ${AGENT_VSOCK_PORT}`)),
    Math.max(0, deadline - Date.now()),
  );
  const onExit = () => ac.abort(new Error("VMM exited"));
  child.once("exit", onExit);
  try {
    return await listener.accept(ac.signal);
  } finally {
    clearTimeout(timer);
    child.off("exit", onExit);
  }
}

/**
 * Boots a VM and waits for its agent's READY. On any failure (VMM error, kernel panic, exit before
 * READY, deadline) everything is torn down and a KindlingError carries the console's last lines.
 */
export async function bootVm(spec: VmSpec, opts: QemuBootOptions = {}): Promise<QemuVm> {
  const started = Date.now();
  const deadline = started + (opts.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS);
  await mkdir(spec.stateDir, { recursive: true });
  const accel = await chooseAccel(opts);
  const tag = randomBytes(3).toString("hex");
  const abs = (name: string) => path.join(spec.stateDir, name);
  const paths: QemuPaths = {
    consoleLog: abs("console.log"),
    agentSocket: abs(`agent-${tag}.sock`),
    qmpSocket: abs(`qmp-${tag}.sock`),
    virtiofsSockets: new Map(),
  };
  const owned = [paths.agentSocket, paths.qmpSocket];
  await rm(paths.consoleLog, { force: true });
  const helpers: ChildProcess[] = [];
  const killHelpers = async () => {
    for (const h of helpers) h.kill("SIGKILL");
  };
  let listener: VsockListener | undefined;
  let vhostVsock: ChildProcess | undefined;
  try {
    for (const [i, share] of (spec.shares ?? []).entries()) {
      const sock = abs(`virtiofs-${i}-${tag}.sock`);
      owned.push(sock);
      paths.virtiofsSockets!.set(share.tag, sock);
      helpers.push(await startVirtiofsd(share.source, sock, deadline));
    }
    if (opts.agent === "vsock") {
      paths.vsockUds = abs(`vsock-${tag}.sock`);
      paths.vhostVsockSocket = abs(`vhost-vsock-${tag}.sock`);
      const agentPath = `${paths.vsockUds}_${AGENT_VSOCK_PORT}`;
      if (Buffer.byteLength(agentPath) > MAX_SOCKET_PATH)
        throw new KindlingError(
          `socket path ${agentPath} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter KINDLING_HOME`,
        );
      owned.push(paths.vsockUds, paths.vhostVsockSocket, agentPath);
      // the guest connects as soon as its init runs: listen before anything starts
      listener = await VsockListener.listen(paths.vsockUds, AGENT_VSOCK_PORT);
      vhostVsock = await startVhostVsock(
        opts.vhostVsockBin ?? VHOST_VSOCK,
        { vhostVsockSocket: paths.vhostVsockSocket, vsockUds: paths.vsockUds },
        deadline,
      );
      helpers.push(vhostVsock);
    }
  } catch (err) {
    await killHelpers();
    await listener?.close();
    for (const f of owned) await rm(f, { force: true });
    throw err;
  }
  // QEMU runs in stateDir so that relative socket paths keep sun_path short
  const rel: QemuPaths = {
    consoleLog: paths.consoleLog,
    agentSocket: path.basename(paths.agentSocket),
    qmpSocket: path.basename(paths.qmpSocket),
    virtiofsSockets: new Map([...paths.virtiofsSockets!].map(([k, v]) => [k, path.basename(v)])),
    vhostVsockSocket: paths.vhostVsockSocket && path.basename(paths.vhostVsockSocket),
  };
  const args = qemuArgs(spec, rel, accel, opts.profile);
  await writeFileAtomic(abs("qemu.args"), `${JSON.stringify([opts.qemuBinary ?? QEMU_BINARY, ...args])}\n`);
  if (!onPath(opts.qemuBinary ?? QEMU_BINARY)) {
    await killHelpers();
    await listener?.close();
    throw new KindlingError(`${opts.qemuBinary ?? QEMU_BINARY} is not installed (run scripts/setup.sh)`);
  }
  const child = spawnTied(
    opts.qemuBinary ?? QEMU_BINARY,
    args,
    { cwd: spec.stateDir, stdio: ["ignore", "ignore", "pipe"] },
    spec.network?.netns,
  );
  track(child);
  let stderr = "";
  child.stderr!.on("data", (d) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const spawnError = new Promise<never>((_, reject) =>
    child.once("error", (e: NodeJS.ErrnoException) =>
      reject(
        e.code === "ENOENT" ? new KindlingError(`${QEMU_BINARY} is not installed (run scripts/setup.sh)`) : e,
      ),
    ),
  );
  spawnError.catch(() => {});
  // paths as this process reaches them (sun_path is short: long ones go through /proc/<pid>/cwd)
  const vm = new QemuVm(
    child,
    accel,
    { ...paths, qmpSocket: connectablePath(paths.qmpSocket, child) },
    helpers,
    owned,
  );
  vm.vsockListener = listener;
  // Without its vsock device the guest cannot reach us: a dead vhost-device-vsock ends the VM.
  vhostVsock?.once("exit", (code, signal) => {
    if (vm.isClosing || vm.exited) return;
    const tail = (vhostVsock as ChildProcess & { stderrTail?: () => string }).stderrTail?.() ?? "";
    vm.helperFailure = `${VHOST_VSOCK} exited (${signal ? `signal ${signal}` : `status ${code}`})${tail ? `: ${tail.split("\n").slice(-3).join("; ")}` : ""}`;
    vm.kill().catch(() => {});
  });
  const fail = async (why: string): Promise<never> => {
    await vm.kill().catch(() => {});
    await vm.close(0).catch(() => {});
    const tail = await vm.consoleTail(20);
    const err = stderr.trim() ? `\nqemu: ${stderr.trim().split("\n").slice(-5).join("\nqemu: ")}` : "";
    throw new KindlingError(
      `VM failed to boot: ${why}${err}\n--- last console lines (${paths.consoleLog}) ---\n${tail}`,
    );
  };
  try {
    const agentSock = await Promise.race([
      spawnError,
      listener
        ? acceptAgent(listener, child, deadline)
        : connectWhenListening(connectablePath(paths.agentSocket, child), child, deadline),
    ]);
    vm.agent = new AgentClient(agentSock);
    const timer = sleep(Math.max(0, deadline - Date.now()), undefined, { ref: false }).then(
      () => "timeout" as const,
    );
    const exited = vm.wait().then(() => "exited" as const);
    // a channel that closes before READY means QEMU is going away: let its exit decide the message
    const ready = vm.agent.ready().then(
      () => "ready" as const,
      () => vm.wait().then(() => "exited" as const),
    );
    const panicked = watchConsole(
      paths.consoleLog,
      /Kernel panic[^\n]*/,
      Promise.race([vm.wait(), ready, timer]),
    );
    const result = await Promise.race([ready, timer, exited, panicked, spawnError]);
    if (result === "ready") {
      vm.bootMs = Date.now() - started;
      return vm;
    }
    if (result === "timeout")
      return await fail(`no agent READY within ${opts.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS} ms`);
    if (result === "exited") {
      const panic = await vm.panicLine();
      const fatal = /kindling-init: \[\d+ ms\] FATAL: ([^\r\n]*)/.exec(await vm.consoleTail(200))?.[1];
      if (panic) return await fail(`guest kernel panic: ${panic}`);
      if (vm.helperFailure) return await fail(vm.helperFailure);
      return await fail(fatal ? `guest init failed: ${fatal}` : `QEMU exited (${fmtExit(await vm.wait())})`);
    }
    return await fail(`guest kernel panic: ${result}`);
  } catch (err) {
    if (err instanceof KindlingError) throw err;
    return await fail(vm.helperFailure ?? (err as Error).message);
  }
}

function fmtExit(e: VmExit): string {
  return e.signal ? `signal ${e.signal}` : `status ${e.code}`;
}

/** Resolves with the matching line once the console shows it; never resolves if `until` settles first. */
function watchConsole(file: string, re: RegExp, until: Promise<unknown>): Promise<string> {
  return new Promise((resolve) => {
    let stop = false;
    until.then(() => {
      stop = true;
    });
    const poll = async () => {
      while (!stop) {
        const text = await readFile(file, "latin1").catch(() => "");
        const m = re.exec(text);
        if (m) return resolve(m[0]);
        await sleep(200);
      }
    };
    poll();
  });
}

export interface RunInVmOptions {
  /** the VM: kernel, initrd and cmdline included (see prepareGuestBoot in kernel.ts) */
  spec: VmSpec;
  /** hostname and mounts, sent before the process starts */
  guest?: GuestConfig;
  process: ProcessSpec;
  stdout?: Writable;
  stderr?: Writable;
  /** fed to the process's stdin; without it stdin is /dev/null */
  stdin?: Readable;
  /** host-side deadline for the process: on expiry it is killed, then the VM */
  timeoutMs?: number;
  /** aborting kills the process, then the VM */
  signal?: AbortSignal;
  qemu?: QemuBootOptions;
  /** called once the VM is up (e.g. to exec more processes into it) */
  onBoot?: (vm: QemuVm) => void;
}

export interface RunResult {
  /** the process's status: exit code, or 128+n when killed by signal n */
  exitCode: number;
  signal: number;
  timedOut: boolean;
  bootMs: number;
}

/**
 * Boots a VM, runs one process in it, streams its output, and always stops the VM. A guest that dies
 * while the process runs (kernel panic, VMM crash) is a KindlingError with the console's last lines.
 */
export async function runInVm(opts: RunInVmOptions): Promise<RunResult> {
  if (opts.signal?.aborted) throw new KindlingError("run aborted before it started");
  const vm = await bootVm(opts.spec, opts.qemu);
  try {
    opts.onBoot?.(vm);
    if (opts.guest && (opts.guest.hostname || opts.guest.mounts?.length))
      await vm.agent.configure(opts.guest);
    const proc = await vm.agent.start(opts.process, {
      stdout: opts.stdout,
      stderr: opts.stderr,
      stdin: opts.stdin,
    });
    let timedOut = false;
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const stop = new Promise<"stopped">((resolve) => {
      if (opts.timeoutMs !== undefined) {
        timer = setTimeout(() => {
          timedOut = true;
          resolve("stopped");
        }, opts.timeoutMs);
      }
      onAbort = () => resolve("stopped");
      if (opts.signal?.aborted) resolve("stopped"); // aborted while the VM booted
      opts.signal?.addEventListener("abort", onAbort, { once: true });
    });
    const vmGone = vm.wait().then(() => "gone" as const);
    const outcome = await Promise.race([proc.exited, stop, vmGone]).catch((err: Error) => err);
    clearTimeout(timer);
    if (onAbort) opts.signal?.removeEventListener("abort", onAbort);
    if (outcome === "stopped") {
      // kill the process, give its EXITED a moment to arrive, then the VM goes in finally
      proc.kill("SIGKILL");
      const exit = await Promise.race([
        proc.exited.catch(() => null),
        sleep(1000, undefined, { ref: false }).then(() => null),
      ]);
      return { exitCode: exit?.status ?? 137, signal: exit?.signal ?? 9, timedOut, bootMs: vm.bootMs };
    }
    if (outcome === "gone" || outcome instanceof Error) {
      await Promise.race([vm.wait(), sleep(1000, undefined, { ref: false })]);
      const tail = await vm.consoleTail(20);
      const panic = await vm.panicLine();
      const why = panic
        ? `guest kernel panic: ${panic}`
        : vm.helperFailure
          ? `the VM stopped while the process ran: ${vm.helperFailure}`
          : "the VM stopped while the process ran";
      throw new KindlingError(`${why}\n--- last console lines (${vm.paths.consoleLog}) ---\n${tail}`);
    }
    const exit = outcome as ProcessExit;
    return { exitCode: exit.status, signal: exit.signal, timedOut: false, bootMs: vm.bootMs };
  } finally {
    await vm.close();
  }
}
