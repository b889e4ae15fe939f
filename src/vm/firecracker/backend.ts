/**
 * Firecracker as a Vmm (src/vm/vmm.ts): start it (vm.ts), wait for the guest agent's READY over vsock,
 * and hand back a BootedVm.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { KindlingError } from "../../util/errors.js";
import { AgentClient } from "../agent/client.js";
import { consolePanicLine } from "../console.js";
import type { VmSpec } from "../spec.js";
import type { AgentTransport, BootedVm, VmExit, Vmm, VmmTraits } from "../vmm.js";
import { resolveFirecracker, tail } from "./process.js";
import { type FirecrackerVm, type FirecrackerVmOptions, startFirecrackerVm } from "./vm.js";

const DEFAULT_BOOT_TIMEOUT_MS = 60_000;

/** The promise's value, or undefined after ms; the timer is cleared either way so it cannot keep Node alive. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const timeout = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), ms);
    });
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export interface FirecrackerBootOptions extends FirecrackerVmOptions {
  /** Deadline from spawn to the guest agent's READY. */
  bootTimeoutMs?: number;
}

/** A running Firecracker microVM with its agent connected. */
export class FirecrackerBootedVm implements BootedVm {
  readonly vmm = "firecracker" as const;
  readonly accel = "kvm" as const;
  private closing?: Promise<void>;
  private ended = false;

  constructor(
    readonly vm: FirecrackerVm,
    readonly agent: AgentClient,
    /** spawn -> guest READY, in ms */
    readonly bootMs: number,
  ) {
    vm.wait().then(() => {
      this.ended = true;
    });
  }

  get pid(): number {
    return this.vm.pid;
  }

  get consoleLog(): string {
    return this.vm.paths.console;
  }

  get exited(): boolean {
    return this.ended;
  }

  async wait(): Promise<VmExit> {
    const e = await this.vm.wait();
    return { code: e.code, signal: e.signal };
  }

  consoleTail(lines = 20): Promise<string> {
    return tail(this.vm.paths.console, lines, 16_000);
  }

  panicLine(): Promise<string | undefined> {
    return consolePanicLine(this.vm.paths.console);
  }

  kill(): Promise<void> {
    return this.vm.kill();
  }

  /**
   * Stops the VM and releases everything: the guest powers off (agent POWEROFF: the init reboots, which
   * ends Firecracker), else Ctrl-Alt-Del, else SIGKILL; then the sockets. Safe to call more than once.
   */
  close(graceMs = 3000): Promise<void> {
    this.closing ??= (async () => {
      const exited = this.vm.wait();
      if (this.agent.isReady) {
        this.agent.powerOff();
        await within(exited, graceMs);
      }
      await this.vm.shutdown(1000);
      this.agent.close();
      await this.vm.close();
    })();
    return this.closing;
  }
}

/**
 * Starts Firecracker and waits for the agent's READY. On any failure (VMM error, exit before READY,
 * deadline) everything is torn down and a KindlingError carries the console's last lines.
 */
export async function bootFirecrackerVm(
  spec: VmSpec,
  opts: FirecrackerBootOptions = {},
): Promise<FirecrackerBootedVm> {
  const started = Date.now();
  const timeoutMs = opts.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS;
  const vm = await startFirecrackerVm(spec, { ...opts, agentTimeoutMs: timeoutMs });
  const fail = async (why: string): Promise<never> => {
    await vm.close();
    const lines = await tail(vm.paths.console, 20, 16_000);
    throw new KindlingError(
      `VM failed to boot: ${why}\n--- last console lines (${vm.paths.console}) ---\n${lines}`,
    );
  };
  let agent: AgentClient;
  try {
    agent = new AgentClient(await vm.agentStream());
  } catch (err) {
    return fail((err as Error).message);
  }
  const stopTimer = new AbortController();
  const timer = sleep(Math.max(0, started + timeoutMs - Date.now()), undefined, {
    signal: stopTimer.signal,
  }).then(
    () => "timeout" as const,
    () => "timeout" as const,
  );
  const ready = agent.ready().then(
    () => "ready" as const,
    () => vm.wait(),
  );
  const result = await Promise.race([ready, timer, vm.wait()]);
  stopTimer.abort(); // a pending timer would keep Node alive until the deadline
  if (result === "ready") return new FirecrackerBootedVm(vm, agent, Date.now() - started);
  agent.close();
  if (result === "timeout") return fail(`no agent READY within ${timeoutMs} ms`);
  return fail(result.reason);
}

/** Firecracker: the guest reboots to end the VM, no virtio-fs, no device limit (the agent is on vsock). */
export const FIRECRACKER_TRAITS: VmmTraits = { halt: "reboot", shares: false };

export class FirecrackerVmm implements Vmm {
  readonly name = "firecracker" as const;
  readonly traits = FIRECRACKER_TRAITS;

  constructor(private readonly opts: FirecrackerBootOptions = {}) {}

  async checkHost(): Promise<void> {
    try {
      await resolveFirecracker(this.opts.firecrackerBin);
    } catch (err) {
      throw new KindlingError(`--runtime firecracker: ${(err as Error).message}`);
    }
  }

  /** Firecracker has only vsock. */
  async agentTransport(): Promise<AgentTransport> {
    return "vsock";
  }

  boot(spec: VmSpec): Promise<FirecrackerBootedVm> {
    return bootFirecrackerVm(spec, this.opts);
  }
}
