/**
 * Firecracker with the guest agent: boot until the agent's READY, run one process, always stop the VM.
 * Mirrors bootVm/runInVm of the QEMU backend (src/vm/qemu.ts) so the caller picks a backend by name.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { KindlingError } from "../../util/errors.js";
import { AgentClient, type ProcessExit } from "../agent/client.js";
import type { RunInVmOptions, RunResult } from "../qemu.js";
import type { VmSpec } from "../spec.js";
import { tail } from "./process.js";
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

/** A running Firecracker microVM with its agent connected (the shape of QemuVm). */
export class FirecrackerBootedVm {
  /** spawn -> guest READY, in ms */
  bootMs = 0;
  readonly accel = "kvm" as const;
  private closing?: Promise<void>;

  constructor(
    readonly vm: FirecrackerVm,
    readonly agent: AgentClient,
  ) {}

  get pid(): number {
    return this.vm.pid;
  }

  get paths(): { consoleLog: string; apiSocket: string; vsockSocket: string } {
    return {
      consoleLog: this.vm.paths.console,
      apiSocket: this.vm.paths.apiSocket,
      vsockSocket: this.vm.paths.vsockSocket,
    };
  }

  async wait(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const e = await this.vm.wait();
    return { code: e.code, signal: e.signal };
  }

  consoleTail(lines = 20): Promise<string> {
    return tail(this.vm.paths.console, lines, 16_000);
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
  if (result === "ready") {
    const booted = new FirecrackerBootedVm(vm, agent);
    booted.bootMs = Date.now() - started;
    return booted;
  }
  agent.close();
  if (result === "timeout") return fail(`no agent READY within ${timeoutMs} ms`);
  return fail(result.reason);
}

export type RunInFirecrackerOptions = Omit<RunInVmOptions, "qemu" | "onBoot"> & {
  firecracker?: FirecrackerBootOptions;
  onBoot?: (vm: FirecrackerBootedVm) => void;
};

/**
 * Boots a VM, runs one process in it, streams its output, and always stops the VM. A guest that dies
 * while the process runs is a KindlingError with the console's last lines.
 */
export async function runInFirecrackerVm(opts: RunInFirecrackerOptions): Promise<RunResult> {
  if (opts.signal?.aborted) throw new KindlingError("run aborted before it started");
  const vm = await bootFirecrackerVm(opts.spec, opts.firecracker);
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
    const stop = new Promise<"stopped">((resolve) => {
      if (opts.timeoutMs !== undefined) {
        timer = setTimeout(() => {
          timedOut = true;
          resolve("stopped");
        }, opts.timeoutMs);
      }
      opts.signal?.addEventListener("abort", () => resolve("stopped"), { once: true });
    });
    const vmGone = vm.wait().then(() => "gone" as const);
    const outcome = await Promise.race([proc.exited, stop, vmGone]).catch((err: Error) => err);
    clearTimeout(timer);
    if (outcome === "stopped") {
      proc.kill("SIGKILL");
      const exit = await within(
        proc.exited.catch(() => undefined),
        1000,
      );
      return { exitCode: exit?.status ?? 137, signal: exit?.signal ?? 9, timedOut, bootMs: vm.bootMs };
    }
    if (outcome === "gone" || outcome instanceof Error) {
      const e = await within(vm.vm.wait(), 1000);
      const why = e ? e.reason : (outcome as Error).message;
      const lines = await vm.consoleTail(20);
      throw new KindlingError(
        `the VM stopped while the process ran (${why})\n--- last console lines (${vm.paths.consoleLog}) ---\n${lines}`,
      );
    }
    const exit = outcome as ProcessExit;
    return { exitCode: exit.status, signal: exit.signal, timedOut: false, bootMs: vm.bootMs };
  } finally {
    await vm.close();
  }
}
