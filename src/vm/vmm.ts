/**
 * The one interface every VMM backend implements (QEMU microvm, Firecracker): boot a VmSpec until the
 * guest agent says READY and hand back a BootedVm. Callers (the VM runtime) never branch on the backend;
 * what differs between backends is described by VmmTraits.
 */
import type { AgentClient } from "./agent/client.js";
import type { AgentTransport, VmSpec } from "./spec.js";

export type { AgentTransport } from "./spec.js";

export const VMM_NAMES = ["qemu", "firecracker"] as const;
export type VmmName = (typeof VMM_NAMES)[number];

/** Hardware acceleration a VM runs with. */
export type Accel = "kvm" | "tcg";

/** What a backend can do, for the layers that build a VmSpec (rootfs strategies, the boot arguments). */
export interface VmmTraits {
  /** How the guest ends the VM so that the VMM exits: Firecracker (and QEMU shaped like it) on a reboot. */
  halt?: "poweroff" | "reboot";
  /** virtio-fs shares (QEMU with virtiofsd; Firecracker has no virtio-fs device). */
  shares: boolean;
  /** Most virtio-mmio devices the guest sees (drives + shares + the agent port); undefined: no limit. */
  maxDevices?: number;
}

/** How the VMM process ended. */
export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A running VM whose agent has said READY. */
export interface BootedVm {
  readonly vmm: VmmName;
  readonly accel: Accel;
  /** The VMM's pid. */
  readonly pid: number;
  /** VMM spawn -> guest agent READY, ms. */
  readonly bootMs: number;
  /** The agent over its byte stream (virtio-serial or vsock), READY already. */
  readonly agent: AgentClient;
  /** The guest's serial console, as a file. */
  readonly consoleLog: string;
  /** True once the VMM process has ended. */
  readonly exited: boolean;
  /** Resolves when the VMM process has ended (poweroff, crash or kill). */
  wait(): Promise<VmExit>;
  /** Kills the VMM now and waits for it. */
  kill(): Promise<void>;
  /** Powers the guest off (agent POWEROFF), else stops the VMM; releases everything; idempotent. */
  close(): Promise<void>;
  /** The last lines of the guest console. */
  consoleTail(lines?: number): Promise<string>;
  /** The console's "Kernel panic - ..." line, if the guest kernel panicked. */
  panicLine(): Promise<string | undefined>;
}

/** A VMM backend. */
export interface Vmm {
  readonly name: VmmName;
  readonly traits: VmmTraits;
  /** Throws a KindlingError naming what this host lacks (binary, device) to run this VMM. */
  checkHost(): Promise<void>;
  /** The agent's channel for a VM (`--agent`, else what this backend and host offer): VmSpec.agent. */
  agentTransport(flag?: "vsock" | "serial"): Promise<AgentTransport>;
  /**
   * Boots the VM and waits for its agent's READY. On any failure (VMM error, kernel panic, exit before
   * READY, deadline) everything is torn down and a KindlingError carries the console's last lines.
   */
  boot(spec: VmSpec): Promise<BootedVm>;
}
