/**
 * `kindling run --runtime qemu|firecracker`: the container is a microVM. prepare() builds the rootfs
 * (src/vm/rootfs: --rootfs lazy|squashfs|copy|virtiofs), boots the VM through the Vmm interface
 * (src/vm/vmm.ts; no backend-specific code here) and sends NETWORK and CONFIGURE (hostname, mounts);
 * start() runs the merged process through the guest agent; its stdout/stderr are piped like runc's, so
 * the lifecycle (timeout, Ctrl-C, exit status) is the same.
 */
import { constants } from "node:os";
import path from "node:path";
import { PassThrough, type Readable, type Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { config } from "../config/index.js";
import { CONTAINER_IFNAME, setUpNetwork } from "../network/attach.js";
import { networkSettings } from "../network/conflist.js";
import { containerResolvConf, hostResolvConf } from "../network/resolv.js";
import { wireTap } from "../network/tap.js";
import { KindlingError } from "../util/errors.js";
import { KindlingHome } from "../util/home.js";
import type { Scope } from "../util/scope.js";
import { type GuestProcess, StartFailedError } from "../vm/agent/client.js";
import { type GuestNetwork, MAX_GROUPS } from "../vm/agent/protocol.js";
import { createVmm } from "../vm/backends.js";
import { prepareGuestBoot } from "../vm/kernel.js";
import type { QemuProfile } from "../vm/qemu.js";
import type { AgentTransport, VmNetwork, VmSpec } from "../vm/spec.js";
import type { BootedVm, Vmm, VmmName } from "../vm/vmm.js";
import { buildProcessSpec, mergeEnv } from "./process.js";
import { checkTtySize } from "./pty.js";
import type {
  Container,
  ExecIo,
  ExecProcess,
  ExecSpec,
  ExitStatus,
  KillSignal,
  PrepareRequest,
  ProcessSpec,
  RunStdio,
  Runtime,
  TtySize,
} from "./types.js";
import { prepareRootfs } from "./vm-rootfs/strategies.js";
import type { RootfsPlan } from "./vm-rootfs/types.js";

/** VM memory when --memory is not given (MiB); the tmpfs writable layer may use half of it. */
export const DEFAULT_VM_MEMORY_MIB = 512;

/** The run dir is $KINDLING_HOME/run/<id>: the home it belongs to (kernel cache, accel probe). */
function homeOf(runDirPath: string): KindlingHome {
  return new KindlingHome(path.dirname(path.dirname(runDirPath)));
}

export class VmRuntime implements Runtime {
  /**
   * @param qemuProfile QEMU only: "firecracker" gives the guest what Firecracker gives it (the tests run
   *   every guest-side step of a Firecracker run this way; docs/firecracker.md).
   */
  constructor(
    readonly name: VmmName,
    private readonly qemuProfile: QemuProfile = "default",
  ) {}

  /** The backend, for runs in `home` (QEMU keeps its KVM probe result in the home's kernel cache). */
  private vmm(home?: KindlingHome): Vmm {
    return createVmm(this.name, {
      home,
      qemu: { profile: this.qemuProfile, snapshots: config().vmSnapshots },
      firecracker: { firecrackerBin: config().firecracker },
    });
  }

  checkHost(): Promise<void> {
    return this.vmm().checkHost();
  }

  async prepare(req: PrepareRequest, scope: Scope): Promise<Container> {
    const { runDir, options } = req;
    const home = homeOf(runDir.path);
    const vmm = this.vmm(home);
    const memoryMiB = options.memoryMiB ?? DEFAULT_VM_MEMORY_MIB;
    const prepStart = Date.now();
    let prepMs = 0;
    // the network is set up while the rootfs is prepared; both settle before an error is thrown
    const networking = this.network(req, scope);
    const preparing = prepareRootfs(options.rootfs, {
      runDir,
      scope,
      image: req.image,
      volumes: options.volumes,
      vmm,
      memoryMiB,
      diskBytes: options.diskBytes,
      packing: options.mountPacking ?? "pack",
      nics: options.network === "none" ? 0 : 1,
      warn: (m) => process.stderr.write(`kindling: ${m}\n`),
    }).finally(() => {
      prepMs = Date.now() - prepStart;
    });
    const [netting, planning] = await Promise.allSettled([networking, preparing]);
    if (planning.status === "rejected") throw planning.reason;
    if (netting.status === "rejected") throw netting.reason;
    const [{ guest: guestNet, vm: vmNet }, plan] = [netting.value, planning.value];
    const hostname = options.hostname ?? req.id;
    const proc = buildProcessSpec(req.image.config, options, plan.users, hostname);
    // before the boot: the agent's START carries at most MAX_GROUPS
    if (proc.additionalGids.length > MAX_GROUPS)
      throw new KindlingError(
        `the user is in ${proc.additionalGids.length} supplementary groups; a VM process may have at most ${MAX_GROUPS}`,
      );
    const agent = await vmm.agentTransport(options.agent);
    const spec = await vmSpec(vmm, home, plan, runDir.file("vm"), memoryMiB, options.cpus, agent);
    if (vmNet) spec.network = vmNet;
    if (config().vmSnapshots) spec.snapshots = home.snapshots;
    // Before the VMM exists: if kindling dies during boot, the next run's cleanup kills it by its paths.
    await runDir.hold(scope, { kind: "vm-processes", dir: runDir.path });
    const vm = await vmm.boot(spec);
    scope.defer(`VM of ${req.id}`, () => vm.close());
    // before CONFIGURE: resolv.conf goes into the root, never into a volume mounted on /etc
    await vm.agent.network(guestNet);
    await vm.agent.configure({ hostname, mounts: plan.mounts });
    // -p: published while the VM booted (src/network attach.ts)
    await netting.value.published;
    return new VmContainer(req.id, vm, proc, req.stdio, prepMs, plan.imageProblem, req.options.tty === true);
  }

  /**
   * bridge: the run's namespace and CNI attachment as for runc, plus a TAP wired to the veth (tap.ts);
   * the VMM runs in the namespace and the guest gets CNI's address over the agent. none: no NIC.
   */
  private async network(
    req: PrepareRequest,
    scope: Scope,
  ): Promise<{ guest: GuestNetwork; vm?: VmNetwork; published?: Promise<void> }> {
    const mode = req.options.network ?? "bridge";
    const resolvConf = containerResolvConf(await hostResolvConf(), mode, req.options.dns ?? []);
    if (mode !== "bridge") {
      await req.runDir.setNetwork({ mode, ports: [] });
      return { guest: { resolvConf } };
    }
    const net = await setUpNetwork({
      home: req.runDir.home,
      runId: req.id,
      mode,
      ports: req.options.publish ?? [],
      settings: networkSettings(),
      holder: req.runDir,
      scope,
    });
    const nic = await wireTap(net.netnsName!, CONTAINER_IFNAME);
    const info = { ...net.info, mac: nic.mac };
    await req.runDir.setNetwork(info);
    if (!info.ip) throw new KindlingError(`CNI network ${info.name} gave no IPv4 address`);
    const guest: GuestNetwork = {
      iface: {
        mac: nic.mac,
        address: info.ip,
        prefixLength: info.prefixLength ?? 32,
        ...(info.gateway ? { gateway: info.gateway } : {}),
        mtu: nic.mtu,
      },
      resolvConf,
    };
    const vm = { netns: net.netnsPath!, tap: nic.tap, mac: nic.mac, mtu: nic.mtu };
    return { guest, vm, published: net.published };
  }
}

/** The VM description: kernel, initramfs, the guest init's options, drives and shares of the plan. */
async function vmSpec(
  vmm: Vmm,
  home: KindlingHome,
  plan: RootfsPlan,
  stateDir: string,
  memoryMiB: number,
  cpus: number | undefined,
  agent: AgentTransport,
): Promise<VmSpec> {
  const virtiofs = plan.root.rootfsType === "virtiofs";
  const boot = await prepareGuestBoot(home, {
    boot: {
      root: plan.root.root,
      rootfsType: plan.root.rootfsType === "virtiofs" ? undefined : plan.root.rootfsType,
      tmpfsSize: plan.tmpfsSize,
      scratch: plan.scratch,
      agent,
      ...(vmm.traits.halt ? { halt: vmm.traits.halt } : {}),
      debug: config().vmDebug,
      extra: virtiofs ? ["kindling.rootfstype=virtiofs"] : [],
    },
    log: (m) => process.stderr.write(`${m}\n`),
  });
  return {
    ...boot,
    memoryMiB,
    vcpus: Math.max(1, Math.ceil(cpus ?? 1)),
    drives: plan.drives,
    shares: plan.shares,
    stateDir,
    agent,
  };
}

/**
 * The status for a process the guest could not start, as Docker reports it: 127 for a command that is
 * not there, 126 for one that cannot be run (permission, a bad working directory or user). Undefined
 * for a failure that is kindling's (fork, pipes), not the command's.
 */
export function startFailureStatus(err: StartFailedError): 126 | 127 | undefined {
  if (err.step === "exec" && (err.errno === constants.errno.ENOENT || err.errno === constants.errno.ENOTDIR))
    return 127;
  if (err.step === "exec" || err.step === "chdir" || err.step === "credentials") return 126;
  return undefined;
}

/** Signal number -> name, for ExitStatus.signal. */
function signalName(n: number): NodeJS.Signals | undefined {
  return (Object.entries(constants.signals) as [NodeJS.Signals, number][]).find(([, v]) => v === n)?.[0];
}

/** Where an output stream goes: a pipe the caller reads, kindling's own stream, or nowhere. */
function sinkFor(
  mode: RunStdio["stdout"],
  own: NodeJS.WriteStream,
): { sink?: Writable; pipe: PassThrough | null } {
  if (mode === "pipe") {
    const pipe = new PassThrough();
    return { sink: pipe, pipe };
  }
  if (mode === "inherit") {
    // A reader that went away (EPIPE) must not crash kindling before it cleans up.
    if (own.listenerCount("error") === 0) own.on("error", () => {});
    return { sink: own, pipe: null };
  }
  return { pipe: null };
}

/** A container that is a booted VM whose agent runs one process. */
class VmContainer implements Container {
  readonly bootMs: number;
  private proc?: GuestProcess;
  private exited?: Promise<ExitStatus>;
  private vmKilled = false;
  private vmExited = false;

  constructor(
    readonly id: string,
    private readonly vm: BootedVm,
    private readonly spec: Required<ProcessSpec>,
    private readonly stdio: RunStdio,
    /** Host-side rootfs preparation (strategy and -v drives), ms. */
    readonly prepMs: number,
    private readonly imageProblem: () => Promise<string | undefined> = async () => undefined,
    /** `-t`: the guest agent gives the process a pty of the guest's devpts; its output comes as stdout. */
    private readonly tty = false,
  ) {
    this.bootMs = vm.bootMs;
    vm.wait().then(() => {
      this.vmExited = true;
    });
  }

  async start(): Promise<{ stdout: Readable | null; stderr: Readable | null }> {
    const out = sinkFor(this.stdio.stdout, process.stdout);
    const err = sinkFor(this.stdio.stderr, process.stderr);
    const end = () => {
      out.pipe?.end();
      err.pipe?.end();
    };
    try {
      this.proc = await this.vm.agent.start(
        {
          args: this.spec.args,
          env: this.spec.env,
          cwd: this.spec.cwd,
          uid: this.spec.uid,
          gid: this.spec.gid,
          additionalGids: this.spec.additionalGids,
        },
        {
          stdout: out.sink,
          stderr: err.sink,
          stdin:
            typeof this.stdio.stdin === "object"
              ? this.stdio.stdin
              : this.stdio.stdin === "inherit"
                ? process.stdin
                : undefined,
          ...(this.tty ? { tty: checkTtySize(this.stdio.tty) } : {}),
        },
      );
    } catch (e) {
      // The guest could not start it (FAILED): the command's failure (126/127), or kindling's.
      const status = e instanceof StartFailedError ? startFailureStatus(e) : undefined;
      end();
      if (status !== undefined) {
        this.exited = Promise.resolve({ status, message: (e as Error).message });
        return { stdout: out.pipe, stderr: err.pipe };
      }
      throw await this.vmFailure((e as Error).message);
    }
    const proc = this.proc;
    this.exited = (async (): Promise<ExitStatus> => {
      const gone = this.vm.wait().then(() => "gone" as const);
      const outcome = await Promise.race([proc.exited, gone]).catch((e: Error) => e);
      if (outcome !== "gone" && !(outcome instanceof Error)) {
        const signal = outcome.signal ? signalName(outcome.signal) : undefined;
        // a root the guest could not read (EIO from a dead lazy daemon): kindling's failure, not the process's
        const problem = await this.imageProblem();
        return { status: outcome.status, ...(signal ? { signal } : {}), ...(problem ? { problem } : {}) };
      }
      if (this.vmKilled) return { status: 137, signal: "SIGKILL" };
      throw await this.vmFailure(outcome instanceof Error ? outcome.message : "the VM stopped");
    })().finally(end);
    this.exited.catch(() => {}); // the caller awaits wait(); no unhandled rejection meanwhile
    return { stdout: out.pipe, stderr: err.pipe };
  }

  /** A KindlingError for a VM that failed under the process, with the guest console's last lines. */
  private async vmFailure(reason: string): Promise<KindlingError> {
    let why = reason;
    await Promise.race([this.vm.wait(), sleep(1000)]);
    const tail = await this.vm.consoleTail(20);
    const problem = await this.imageProblem();
    if (problem) why = `${why}; ${problem}`;
    // the panic line itself may be further up than the tail: its trace follows it
    const panic = (await this.vm.panicLine()) ?? /Kernel panic[^\n]*/.exec(tail)?.[0];
    const what = panic ? `guest kernel panic: ${panic}` : `the VM failed while the process ran (${why})`;
    return new KindlingError(`${what}\n--- last console lines (${this.vm.consoleLog}) ---\n${tail}`);
  }

  wait(): Promise<ExitStatus> {
    if (!this.exited) return Promise.reject(new Error("container not started"));
    return this.exited;
  }

  resize(size: TtySize): void {
    if (this.tty && !this.vmExited) this.proc?.resize(checkTtySize(size));
  }

  async kill(signal: KillSignal): Promise<void> {
    const proc = this.proc;
    if (!proc || this.vmExited) return;
    proc.kill(`SIG${signal}` as NodeJS.Signals);
    if (signal !== "KILL") return;
    // An agent that does not deliver KILL (a hung guest) must not keep the run alive: end the VM.
    const done = await Promise.race([
      proc.exited.then(
        () => true,
        () => true,
      ),
      sleep(3000).then(() => false),
    ]);
    if (!done && !this.vmExited) {
      this.vmKilled = true;
      await this.vm.kill();
    }
  }

  /** Another process through the guest agent: the container's user and env, these args. */
  async exec(spec: ExecSpec, io: ExecIo): Promise<ExecProcess> {
    if (this.vmExited) throw new KindlingError(`container ${this.id} is not running`);
    const proc = await this.vm.agent.start(
      {
        args: spec.args,
        env: mergeEnv(this.spec.env, spec.env),
        cwd: spec.cwd ?? this.spec.cwd,
        uid: this.spec.uid,
        gid: this.spec.gid,
        additionalGids: this.spec.additionalGids,
      },
      {
        stdout: io.stdout,
        stderr: io.stderr,
        stdin: io.stdin,
        ...(io.tty ? { tty: checkTtySize(io.tty) } : {}),
      },
    );
    const exited = proc.exited.then((e): ExitStatus => {
      const signal = e.signal ? signalName(e.signal) : undefined;
      return { status: e.status, ...(signal ? { signal } : {}) };
    });
    exited.catch(() => {});
    return {
      exited,
      kill: (signal: KillSignal) => proc.kill(`SIG${signal}` as NodeJS.Signals),
      resize: (size) => proc.resize(checkTtySize(size)),
    };
  }

  async delete(): Promise<void> {
    await this.vm.close();
  }
}
