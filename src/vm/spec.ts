/**
 * One VM description, rendered by each VMM backend (QEMU microvm, Firecracker).
 * A backend turns it into a command line or API calls; nothing here is VMM-specific.
 * Also the one description of a process to run, shared by every runtime (the agent's START, runc's config.json).
 */

/** How the guest's agent reaches the host: a virtio-serial port, or vsock. */
export type AgentTransport = "virtio-serial" | "vsock";

/**
 * A process to run. `S` is string for a container's process (the runtime resolves every field:
 * Required<ProcessSpec>); the agent also carries raw bytes (Buffer) intact.
 */
export interface ProcessSpec<S extends string | Buffer = string> {
  args: S[];
  /** "K=V" entries; nothing is added (the runtime supplies PATH) */
  env?: S[];
  /** default / */
  cwd?: S;
  uid?: number;
  gid?: number;
  /** supplementary groups (setgroups); none when empty or absent */
  additionalGids?: number[];
}
export interface DriveSpec {
  id: string;
  /** Host path of the file or block device. */
  path: string;
  readOnly: boolean;
  /** Drive 0 is the root device. */
  isRoot: boolean;
}

export interface ShareSpec {
  /** virtio-fs tag the guest mounts. */
  tag: string;
  /** Host directory shared through virtiofsd. */
  source: string;
}

/**
 * The VM's NIC (src/network/tap.ts): a TAP in the run's network namespace, wired to the CNI veth there.
 * The VMM process runs in that namespace (it opens the TAP by name).
 */
export interface VmNetwork {
  /** /run/netns/<name> */
  netns: string;
  tap: string;
  /** The guest's MAC: the veth's, so the bridge and CNI's records match. */
  mac: string;
  mtu: number;
}

export interface VmSpec {
  /** Uncompressed vmlinux (ELF) to boot. */
  kernelPath: string;
  initrdPath?: string;
  /** Kernel command line (console, root=, init= and the guest init's own options). */
  cmdline: string;
  /**
   * How the guest finds its virtio-mmio devices: ACPI's DSDT (default), or `virtio_mmio.device=` on the
   * command line (Kindling's built kernel: its ACPI cannot load microvm's tables without PCI, docs/vm-start.md)
   */
  deviceDiscovery?: "acpi" | "cmdline";
  memoryMiB: number;
  vcpus: number;
  drives: DriveSpec[];
  shares: ShareSpec[];
  /** Directory for the VM's sockets, logs and console output; owned by the run. */
  stateDir: string;
  /** eth0 of the guest; none: loopback only. */
  network?: VmNetwork;
  /** The agent's channel (a device of the VM); default: the backend's (QEMU virtio-serial, Firecracker vsock). */
  agent?: AgentTransport;
  /**
   * A snapshot store's directory (src/vm/snapshot.ts): restore this VM's shape from a snapshot there, or
   * boot, save one and go on. Used where the backend can (QEMU: no vhost-user device, the virtio-serial
   * agent, an initramfs); otherwise the VM boots. Absent: always boot.
   */
  snapshots?: string;
}
