/**
 * VmSpec -> Firecracker: the ordered API calls that configure and start a microVM, and the
 * equivalent --config-file document. Pure functions: no I/O, so tests can check them against the schema.
 */
import { KindlingError } from "../../util/errors.js";
import type { VmSpec } from "../spec.js";

// Request bodies, named as in the API schema's definitions.
export interface BootSource {
  kernel_image_path: string;
  initrd_path?: string;
  boot_args?: string;
}
export interface Drive {
  drive_id: string;
  path_on_host: string;
  is_root_device: boolean;
  is_read_only: boolean;
}
export interface MachineConfiguration {
  vcpu_count: number;
  mem_size_mib: number;
  smt?: boolean;
}
export interface NetworkInterface {
  iface_id: string;
  host_dev_name: string;
  guest_mac?: string;
  mtu?: number;
}
export interface Vsock {
  guest_cid: number;
  uds_path: string;
}
export interface Logger {
  log_path: string;
  level?: "Error" | "Warning" | "Info" | "Debug" | "Trace" | "Off";
  show_level?: boolean;
  show_log_origin?: boolean;
}
export interface Metrics {
  metrics_path: string;
}
export interface InstanceActionInfo {
  action_type: "InstanceStart" | "SendCtrlAltDel" | "FlushMetrics";
}
/** The --config-file document (FullVmConfiguration). */
export interface FirecrackerConfig {
  "boot-source": BootSource;
  drives: Drive[];
  "machine-config": MachineConfiguration;
  "network-interfaces"?: NetworkInterface[];
  vsock?: Vsock;
  logger?: Logger;
  metrics?: Metrics;
}

export interface FirecrackerCall {
  method: "PUT" | "PATCH" | "GET";
  path: string;
  body?: unknown;
}

/** Paths as Firecracker sees them (inside the chroot when jailed), for the things Kindling creates. */
export interface RenderOptions {
  /** vsock device; undefined renders no vsock. */
  vsock?: Vsock;
  logger?: Logger;
  metrics?: Metrics;
  /** Maps a host path of the kernel, initrd or a drive to the path Firecracker opens (identity unless jailed). */
  mapPath?: (hostPath: string, kind: "kernel" | "initrd" | "drive", id: string) => string;
}

/**
 * Kernel arguments Firecracker's guests need: Firecracker has no power-off device, so a VM ends by a guest
 * reboot, which makes the VMM exit: reboot=k (keyboard-controller reset), panic=1 (a panic reboots too),
 * kindling.halt=reboot (docs/guest.md: the init reboots instead of powering off). pci=off: there is no PCI bus.
 * A spec's own values win: a key already on its command line is not added again.
 */
export const FIRECRACKER_BOOT_ARGS = [
  "reboot=k",
  "panic=1",
  "pci=off",
  // From Firecracker's own default command line: Firecracker emulates only a minimal i8042 (enough for
  // the reset and Ctrl-Alt-Del); not probing for a mouse, a multiplexer or PnP saves boot time.
  "i8042.noaux",
  "i8042.nomux",
  "i8042.nopnp",
  "i8042.dumbkbd",
  "kindling.halt=reboot",
];

export function firecrackerBootArgs(cmdline: string): string {
  const have = new Set(cmdline.split(/\s+/).map((a) => a.split("=")[0]));
  const extra = FIRECRACKER_BOOT_ARGS.filter((a) => !have.has(a.split("=")[0]));
  return [cmdline.trim(), ...extra].filter((s) => s.length > 0).join(" ");
}

/** Firecracker accepts ids of at most 64 alphanumerics and underscores. */
export function firecrackerId(id: string): string {
  const clean = id.replace(/[^A-Za-z0-9_]/g, "_").slice(0, 64);
  if (clean.length === 0) throw new KindlingError(`drive id ${JSON.stringify(id)} has no usable characters`);
  return clean;
}

/** Checks what Firecracker cannot do before any process is started. */
export function checkSpec(spec: VmSpec): void {
  if (spec.shares.length > 0) {
    throw new KindlingError(
      `Firecracker has no virtio-fs, so shares (${spec.shares.map((s) => s.tag).join(", ")}) cannot be attached; ` +
        "use --runtime qemu for --rootfs virtiofs",
    );
  }
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 32) {
    throw new KindlingError(`Firecracker supports 1 to 32 vCPUs, not ${spec.vcpus}`);
  }
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 1) {
    throw new KindlingError(`memory must be a positive whole number of MiB, not ${spec.memoryMiB}`);
  }
  const roots = spec.drives.filter((d) => d.isRoot);
  if (roots.length > 1) {
    throw new KindlingError(
      `Firecracker accepts one root drive, the spec has ${roots.length}: ${roots.map((d) => d.id).join(", ")}`,
    );
  }
  const ids = new Set<string>();
  for (const d of spec.drives) {
    const id = firecrackerId(d.id);
    if (ids.has(id)) throw new KindlingError(`two drives map to the Firecracker drive id ${id}`);
    ids.add(id);
  }
}

/**
 * Drives in the order the guest will see them. Firecracker puts the root device first (/dev/vda) and
 * the others after it in the order they were added, so we add them in that same order.
 */
export function renderDrives(spec: VmSpec, opts: RenderOptions = {}): Drive[] {
  const map = opts.mapPath ?? ((p: string) => p);
  const ordered = [...spec.drives.filter((d) => d.isRoot), ...spec.drives.filter((d) => !d.isRoot)];
  return ordered.map((d) => ({
    drive_id: firecrackerId(d.id),
    path_on_host: map(d.path, "drive", d.id),
    is_root_device: d.isRoot,
    is_read_only: d.readOnly,
  }));
}

export function renderBootSource(spec: VmSpec, opts: RenderOptions = {}): BootSource {
  const map = opts.mapPath ?? ((p: string) => p);
  const boot: BootSource = {
    kernel_image_path: map(spec.kernelPath, "kernel", "kernel"),
    boot_args: firecrackerBootArgs(spec.cmdline),
  };
  if (spec.initrdPath) boot.initrd_path = map(spec.initrdPath, "initrd", "initrd");
  return boot;
}

export function renderMachineConfig(spec: VmSpec): MachineConfiguration {
  return { vcpu_count: spec.vcpus, mem_size_mib: spec.memoryMiB, smt: false };
}

/** The guest's eth0: the TAP in the namespace Firecracker runs in, with the veth's MAC and MTU. */
export function renderNetworkInterfaces(spec: VmSpec): NetworkInterface[] {
  const n = spec.network;
  if (!n) return [];
  return [{ iface_id: "eth0", host_dev_name: n.tap, guest_mac: n.mac, mtu: n.mtu }];
}

/**
 * The API calls, in order: logger and metrics first (so later faults are logged), then machine, boot
 * source, drives and vsock, then InstanceStart.
 */
export function renderApiCalls(spec: VmSpec, opts: RenderOptions = {}): FirecrackerCall[] {
  checkSpec(spec);
  const calls: FirecrackerCall[] = [];
  if (opts.logger) calls.push({ method: "PUT", path: "/logger", body: opts.logger });
  if (opts.metrics) calls.push({ method: "PUT", path: "/metrics", body: opts.metrics });
  calls.push({ method: "PUT", path: "/machine-config", body: renderMachineConfig(spec) });
  calls.push({ method: "PUT", path: "/boot-source", body: renderBootSource(spec, opts) });
  for (const drive of renderDrives(spec, opts)) {
    calls.push({ method: "PUT", path: `/drives/${drive.drive_id}`, body: drive });
  }
  for (const nic of renderNetworkInterfaces(spec)) {
    calls.push({ method: "PUT", path: `/network-interfaces/${nic.iface_id}`, body: nic });
  }
  if (opts.vsock) calls.push({ method: "PUT", path: "/vsock", body: opts.vsock });
  calls.push({ method: "PUT", path: "/actions", body: { action_type: "InstanceStart" } });
  return calls;
}

/** The same VM as one --config-file document; Firecracker boots it as soon as it has read it. */
export function renderConfigFile(spec: VmSpec, opts: RenderOptions = {}): FirecrackerConfig {
  checkSpec(spec);
  const config: FirecrackerConfig = {
    "boot-source": renderBootSource(spec, opts),
    drives: renderDrives(spec, opts),
    "machine-config": renderMachineConfig(spec),
  };
  const nics = renderNetworkInterfaces(spec);
  if (nics.length > 0) config["network-interfaces"] = nics;
  if (opts.vsock) config.vsock = opts.vsock;
  if (opts.logger) config.logger = opts.logger;
  if (opts.metrics) config.metrics = opts.metrics;
  return config;
}
