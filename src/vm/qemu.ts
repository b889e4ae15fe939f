/**
 * QEMU `microvm` backend (a Vmm, src/vm/vmm.ts): renders a VmSpec into a command line, supervises QEMU
 * (and virtiofsd, vhost-device-vsock), and connects the agent over vsock (Firecracker's hybrid vsock,
 * through vhost-device-vsock) or a virtio-serial chardev socket. The boot is a list of named steps
 * (QEMU_BOOT_STEPS); the vsock agent is an adaptation of it (withVsockAgent).
 */
import { type ChildProcess, type SpawnOptions, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, rm } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { searchPath } from "../config/index.js";
import { kvmFacts } from "../host/kvm.js";
import { bootId } from "../host/proc.js";
import { writeFileAtomic } from "../util/atomic.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { Scope } from "../util/scope.js";
import { AgentClient } from "./agent/client.js";
import { consolePanicLine } from "./console.js";
import { firecrackerBootArgs } from "./firecracker/render.js";
import { VsockListener, vsockConnect } from "./firecracker/vsock.js";
import { tcgKernelParams } from "./kernel.js";
import { RestoreFailed, snapshotBlocker, withSnapshot } from "./qemu-snapshot.js";
import type { VmSpec } from "./spec.js";
import { StepList } from "./steps.js";
import type { Accel, AgentTransport, BootedVm, VmExit, Vmm, VmmTraits } from "./vmm.js";

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
/**
 * QEMU microvm has 24 virtio-mmio slots, but a guest sees only 23 devices (measured: with 23 drives and
 * the agent's virtio-serial the serial port is missing). One is the agent's port.
 */
export const QEMU_MAX_VIRTIO_DEVICES = 23;

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
   * Snapshots are on (config vmSnapshots): without --agent, the agent goes over virtio-serial, which
   * migrates (QEMU 7.2's vhost-user-vsock device blocks migration). The store is VmSpec.snapshots.
   */
  snapshots?: boolean;
  /**
   * "firecracker": the guest sees what Firecracker gives it (docs/firecracker.md, "The Firecracker-shaped
   * QEMU profile"): virtio-mmio devices described only in ACPI, the serial console and an i8042 (for the
   * reset) as the only legacy devices, no RTC, Firecracker's boot arguments, a guest reboot ends the VM.
   * Use it with the vsock agent.
   */
  profile?: QemuProfile;
}

export type QemuProfile = "default" | "firecracker";

export type { AgentTransport } from "./vmm.js";

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
  // acpi=off: QEMU puts each device on the command line instead (virtio_mmio.device=)
  const machine = fc
    ? ["microvm", "rtc=off", "acpi=on", "auto-kernel-cmdline=off"]
    : ["microvm", "rtc=on", ...(spec.deviceDiscovery === "cmdline" ? ["acpi=off"] : [])];
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

/** A running QEMU microvm with its agent connected. */
export class QemuVm implements BootedVm {
  readonly vmm = "qemu" as const;
  /** spawn -> guest READY (after a restore: READY again, the root mounted), in ms */
  bootMs = 0;
  /** How this VM started: booted, booted and saved as a snapshot, or restored from one. */
  startKind: "boot" | "snapshot-saved" | "restored" = "boot";
  /** Host-measured stages of the start, ms (qemu-snapshot.ts: restore, save, setup). */
  readonly stages: Record<string, number> = {};
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
    /** virtiofsd, vhost-device-vsock, the vsock listener and the sockets: released last by close() */
    private readonly scope: Scope,
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

  get consoleLog(): string {
    return this.paths.consoleLog;
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
  panicLine(): Promise<string | undefined> {
    return consolePanicLine(this.paths.consoleLog);
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
      await this.scope.close();
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
    if (Date.now() > deadline) throw new DeadlineError();
    const sock = await new Promise<net.Socket | null>((resolve) => {
      const s = net.connect(sockPath);
      s.once("connect", () => resolve(s));
      s.once("error", () => resolve(null));
    });
    if (sock) return sock;
    await sleep(10);
  }
}

/**
 * KVM when /dev/kvm is usable as `kindling doctor` sees it (src/host/kvm.ts: the module behind it and a
 * probe VM that must reach 64-bit mode), cached per host boot in the home's kernel directory.
 */
export async function chooseAccel(opts: QemuBootOptions): Promise<Accel> {
  if (opts.accel && opts.accel !== "auto") return opts.accel;
  if (!existsSync("/dev/kvm")) return "tcg";
  const boot = await bootId();
  const cacheFile = opts.home ? path.join(opts.home.kernel, "accel-probe.json") : undefined;
  if (cacheFile) {
    const cached = await readFile(cacheFile, "utf8")
      .then((t) => JSON.parse(t) as { bootId: string; accel: Accel })
      .catch(() => null);
    if (cached?.bootId === boot) return cached.accel;
  }
  const usable = opts.home ? (await kvmFacts({ qemu: opts.qemuBinary ?? QEMU_BINARY })).usable : false;
  const accel: Accel = usable ? "kvm" : "tcg";
  if (cacheFile) await writeFileAtomic(cacheFile, JSON.stringify({ bootId: boot, accel })).catch(() => {});
  return accel;
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

/** What the boot steps share: each step fills in what the later ones use. */
export interface QemuBoot {
  readonly spec: VmSpec;
  readonly opts: QemuBootOptions;
  readonly started: number;
  readonly deadline: number;
  /** a suffix that keeps this VM's socket names apart from a previous one's in the same state dir */
  readonly tag: string;
  accel?: Accel;
  paths?: QemuPaths;
  helpers: ChildProcess[];
  args?: string[];
  stderr: string;
  spawnError?: Promise<never>;
  vm?: QemuVm;
  /** the vsock agent: the hybrid vsock listener and vhost-device-vsock (withVsockAgent) */
  listener?: VsockListener;
  vhostVsock?: ChildProcess;
  /** what QEMU runs instead of `spec` (a snapshot VM's command line), and arguments after the device list */
  bootSpec?: VmSpec;
  extraArgs?: string[];
  /** a snapshot to restore was found but failed: boot instead (qemu-snapshot.ts) */
  noRestore?: boolean;
}

/** A boot that failed after QEMU started: the reason, to be reported with the console's last lines. */
export class BootFailure extends Error {}
/** The boot deadline passed (before QEMU even opened the agent socket, on a loaded host). */
class DeadlineError extends Error {}

export const noReadyWithin = (ctx: QemuBoot) =>
  `no agent READY within ${ctx.opts.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS} ms`;
const abs = (ctx: QemuBoot, name: string) => path.join(ctx.spec.stateDir, name);
const binary = (ctx: QemuBoot) => ctx.opts.qemuBinary ?? QEMU_BINARY;

/** The steps of a QEMU boot, in order. */
export const QEMU_BOOT_STEPS: StepList<QemuBoot> = StepList.of<QemuBoot>(
  {
    name: "make-state-dir",
    run: async (ctx) => {
      await mkdir(ctx.spec.stateDir, { recursive: true });
    },
  },
  {
    name: "choose-accel",
    run: async (ctx) => {
      ctx.accel = await chooseAccel(ctx.opts);
    },
  },
  {
    name: "plan-paths",
    run: async (ctx, scope) => {
      ctx.paths = {
        consoleLog: abs(ctx, "console.log"),
        agentSocket: abs(ctx, `agent-${ctx.tag}.sock`),
        qmpSocket: abs(ctx, `qmp-${ctx.tag}.sock`),
        virtiofsSockets: new Map(),
      };
      const p = ctx.paths;
      scope.defer("VMM sockets", async () => {
        const vsock = p.vsockUds ? [p.vsockUds, `${p.vsockUds}_${AGENT_VSOCK_PORT}`] : [];
        const owned = [p.agentSocket, p.qmpSocket, ...p.virtiofsSockets!.values(), ...vsock];
        for (const f of [...owned, p.vhostVsockSocket ?? ""].filter(Boolean)) await rm(f, { force: true });
      });
      await rm(ctx.paths.consoleLog, { force: true });
    },
  },
  {
    name: "start-virtiofsd",
    run: async (ctx, scope) => {
      scope.defer("virtiofsd", async () => {
        for (const h of ctx.helpers) {
          if (h.exitCode === null && h.signalCode === null) {
            h.kill("SIGKILL");
            await new Promise((r) => h.once("exit", r));
          }
        }
      });
      for (const [i, share] of (ctx.spec.shares ?? []).entries()) {
        const sock = abs(ctx, `virtiofs-${i}-${ctx.tag}.sock`);
        ctx.paths!.virtiofsSockets!.set(share.tag, sock);
        ctx.helpers.push(await startVirtiofsd(share.source, sock, ctx.deadline));
      }
    },
  },
  {
    name: "render-args",
    run: async (ctx) => {
      const paths = ctx.paths!;
      // QEMU runs in stateDir so that relative socket paths keep sun_path short
      const rel: QemuPaths = {
        consoleLog: paths.consoleLog,
        agentSocket: path.basename(paths.agentSocket),
        qmpSocket: path.basename(paths.qmpSocket),
        virtiofsSockets: new Map([...paths.virtiofsSockets!].map(([k, v]) => [k, path.basename(v)])),
        vhostVsockSocket: paths.vhostVsockSocket && path.basename(paths.vhostVsockSocket),
      };
      ctx.args = [
        ...qemuArgs(ctx.bootSpec ?? ctx.spec, rel, ctx.accel!, ctx.opts.profile),
        ...(ctx.extraArgs ?? []),
      ];
      await writeFileAtomic(abs(ctx, "qemu.args"), `${JSON.stringify([binary(ctx), ...ctx.args])}\n`);
      if (!onPath(binary(ctx))) {
        throw new KindlingError(`${binary(ctx)} is not installed (run scripts/setup.sh)`);
      }
    },
  },
  {
    name: "spawn-qemu",
    run: (ctx, scope) => {
      const child = spawnTied(
        binary(ctx),
        ctx.args!,
        { cwd: ctx.spec.stateDir, stdio: ["ignore", "ignore", "pipe"] },
        ctx.spec.network?.netns,
      );
      track(child);
      child.stderr!.on("data", (d) => {
        ctx.stderr = (ctx.stderr + d.toString()).slice(-4000);
      });
      ctx.spawnError = new Promise<never>((_, reject) =>
        child.once("error", (e: NodeJS.ErrnoException) =>
          reject(
            e.code === "ENOENT"
              ? new KindlingError(`${QEMU_BINARY} is not installed (run scripts/setup.sh)`)
              : e,
          ),
        ),
      );
      ctx.spawnError.catch(() => {});
      // paths as this process reaches them (sun_path is short: long ones go through /proc/<pid>/cwd)
      const paths = { ...ctx.paths!, qmpSocket: connectablePath(ctx.paths!.qmpSocket, child) };
      ctx.vm = new QemuVm(child, ctx.accel!, paths, scope);
    },
  },
  {
    name: "connect-agent",
    run: async (ctx) => {
      const vm = ctx.vm!;
      const agentSock = await Promise.race([
        ctx.spawnError!,
        connectWhenListening(connectablePath(ctx.paths!.agentSocket, vm.child), vm.child, ctx.deadline),
      ]).catch((err: Error) => {
        if (err instanceof KindlingError) throw err;
        throw new BootFailure(
          err instanceof DeadlineError ? noReadyWithin(ctx) : (vm.helperFailure ?? err.message),
        );
      });
      vm.agent = new AgentClient(agentSock);
    },
  },
  {
    name: "wait-ready",
    run: async (ctx) => {
      const vm = ctx.vm!;
      const timer = sleep(Math.max(0, ctx.deadline - Date.now()), undefined, { ref: false }).then(
        () => "timeout" as const,
      );
      const exited = vm.wait().then(() => "exited" as const);
      // a channel that closes before READY means QEMU is going away: let its exit decide the message
      const ready = vm.agent.ready().then(
        () => "ready" as const,
        () => vm.wait().then(() => "exited" as const),
      );
      const panicked = watchConsole(
        ctx.paths!.consoleLog,
        /Kernel panic[^\n]*/,
        Promise.race([vm.wait(), ready, timer]),
      );
      const result = await Promise.race([ready, timer, exited, panicked, ctx.spawnError!]);
      if (result === "ready") {
        vm.bootMs = Date.now() - ctx.started;
        return;
      }
      if (result === "timeout") throw new BootFailure(noReadyWithin(ctx));
      if (result === "exited") {
        const panic = await vm.panicLine();
        const fatal = /kindling-init: \[\d+ ms\] FATAL: ([^\r\n]*)/.exec(await vm.consoleTail(200))?.[1];
        if (panic) throw new BootFailure(`guest kernel panic: ${panic}`);
        if (vm.helperFailure) throw new BootFailure(vm.helperFailure);
        throw new BootFailure(
          fatal ? `guest init failed: ${fatal}` : `QEMU exited (${fmtExit(await vm.wait())})`,
        );
      }
      throw new BootFailure(`guest kernel panic: ${result}`);
    },
  },
);

/**
 * The agent over vsock (Firecracker's hybrid vsock, through vhost-device-vsock): listen for the guest's
 * connection and start vhost-device-vsock before QEMU, watch it once QEMU runs (without its vsock device
 * the guest cannot reach us: a dead vhost-device-vsock ends the VM), and accept instead of connecting.
 */
export function withVsockAgent(steps: StepList<QemuBoot>): StepList<QemuBoot> {
  return steps
    .insertAfter("start-virtiofsd", {
      name: "start-vhost-vsock",
      run: async (ctx, scope) => {
        const p = ctx.paths!;
        p.vsockUds = abs(ctx, `vsock-${ctx.tag}.sock`);
        p.vhostVsockSocket = abs(ctx, `vhost-vsock-${ctx.tag}.sock`);
        const agentPath = `${p.vsockUds}_${AGENT_VSOCK_PORT}`;
        if (Buffer.byteLength(agentPath) > MAX_SOCKET_PATH)
          throw new KindlingError(
            `socket path ${agentPath} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter KINDLING_HOME`,
          );
        // the guest connects as soon as its init runs: listen before anything starts
        const listener = await VsockListener.listen(p.vsockUds, AGENT_VSOCK_PORT);
        ctx.listener = listener;
        scope.defer("vsock listener", () => listener.close());
        ctx.vhostVsock = await startVhostVsock(
          ctx.opts.vhostVsockBin ?? VHOST_VSOCK,
          { vhostVsockSocket: p.vhostVsockSocket, vsockUds: p.vsockUds },
          ctx.deadline,
        );
        ctx.helpers.push(ctx.vhostVsock);
      },
    })
    .insertAfter("spawn-qemu", {
      name: "watch-vhost-vsock",
      run: (ctx) => {
        const vm = ctx.vm!;
        const helper = ctx.vhostVsock! as ChildProcess & { stderrTail?: () => string };
        vm.vsockListener = ctx.listener;
        helper.once("exit", (code, signal) => {
          if (vm.isClosing || vm.exited) return;
          const tail = helper.stderrTail?.() ?? "";
          vm.helperFailure = `${VHOST_VSOCK} exited (${signal ? `signal ${signal}` : `status ${code}`})${tail ? `: ${tail.split("\n").slice(-3).join("; ")}` : ""}`;
          vm.kill().catch(() => {});
        });
      },
    })
    .swap({
      name: "connect-agent",
      run: async (ctx) => {
        const vm = ctx.vm!;
        const agentSock = await Promise.race([
          ctx.spawnError!,
          acceptAgent(ctx.listener!, vm.child, ctx.deadline),
        ]).catch((err: Error) => {
          throw err instanceof KindlingError ? err : new BootFailure(vm.helperFailure ?? err.message);
        });
        vm.agent = new AgentClient(agentSock);
      },
    });
}

/** The boot steps for this VM: the default list, with the vsock agent or snapshots when the spec asks. */
export function qemuBootSteps(spec: VmSpec, opts: QemuBootOptions = {}): StepList<QemuBoot> {
  if ((spec.agent ?? opts.agent) === "vsock") return withVsockAgent(QEMU_BOOT_STEPS);
  return snapshotBlocker(spec, opts) ? QEMU_BOOT_STEPS : withSnapshot(QEMU_BOOT_STEPS);
}

/**
 * Boots a VM under QEMU and waits for its agent's READY. On any failure (VMM error, kernel panic, exit
 * before READY, deadline) everything is torn down; once QEMU ran, a KindlingError carries the console's
 * last lines.
 */
export async function bootQemuVm(spec: VmSpec, opts: QemuBootOptions = {}): Promise<QemuVm> {
  try {
    return await bootOnce(spec, opts, false);
  } catch (err) {
    // a snapshot that does not restore (a QEMU that cannot load it): remove it, boot and save a new one
    if (!(err instanceof RestoreFailed)) throw err;
    await err.discard();
    return bootOnce(spec, opts, true);
  }
}

async function bootOnce(spec: VmSpec, opts: QemuBootOptions, noRestore: boolean): Promise<QemuVm> {
  const started = Date.now();
  const ctx: QemuBoot = {
    spec,
    opts,
    started,
    deadline: started + (opts.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS),
    tag: randomBytes(3).toString("hex"),
    helpers: [],
    stderr: "",
    noRestore,
  };
  const scope = new Scope();
  try {
    await qemuBootSteps(spec, opts).run(ctx, scope);
    return ctx.vm!;
  } catch (err) {
    const vm = ctx.vm;
    if (!vm) {
      await scope.close();
      throw err;
    }
    await vm.kill().catch(() => {});
    await vm.close(0).catch(() => {});
    if (err instanceof KindlingError || err instanceof RestoreFailed) throw err;
    const tail = await vm.consoleTail(20);
    const qemu = ctx.stderr.trim()
      ? `\nqemu: ${ctx.stderr.trim().split("\n").slice(-5).join("\nqemu: ")}`
      : "";
    throw new KindlingError(
      `VM failed to boot: ${(err as Error).message}${qemu}\n--- last console lines (${vm.consoleLog}) ---\n${tail}`,
    );
  }
}

/** QEMU microvm: virtio-fs shares through virtiofsd, 23 virtio-mmio devices; shaped like Firecracker, it ends on a reboot. */
export function qemuTraits(profile: QemuProfile = "default"): VmmTraits {
  return {
    shares: true,
    maxDevices: QEMU_MAX_VIRTIO_DEVICES,
    ...(profile === "firecracker" ? { halt: "reboot" as const } : {}),
  };
}

export const QEMU_TRAITS: VmmTraits = qemuTraits();

export class QemuVmm implements Vmm {
  readonly name = "qemu" as const;
  readonly traits: VmmTraits;

  constructor(private readonly opts: QemuBootOptions = {}) {
    this.traits = qemuTraits(opts.profile);
  }

  async checkHost(): Promise<void> {
    const bin = this.opts.qemuBinary ?? QEMU_BINARY;
    if (!onPath(bin)) {
      throw new KindlingError(
        `--runtime qemu: ${bin} is not installed (run scripts/setup.sh); run \`kindling doctor\``,
      );
    }
  }

  /**
   * vsock through vhost-device-vsock (the same hybrid vsock host code as Firecracker) where that is
   * installed, else virtio-serial; the Firecracker-shaped profile always uses vsock; --agent decides.
   * With snapshots on, virtio-serial unless --agent vsock: the vsock device cannot be migrated.
   */
  async agentTransport(flag?: "vsock" | "serial"): Promise<AgentTransport> {
    if (this.opts.profile === "firecracker" || flag === "vsock") return "vsock";
    if (flag === "serial" || this.opts.snapshots) return "virtio-serial";
    return onPath(this.opts.vhostVsockBin ?? VHOST_VSOCK) ? "vsock" : "virtio-serial";
  }

  boot(spec: VmSpec): Promise<QemuVm> {
    return bootQemuVm(spec, this.opts);
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
