import { defaultSeccomp, type OciSeccomp } from "./seccomp.js";
import type { ProcessSpec, VolumeSpec } from "./types.js";

/** The subset of the OCI runtime spec (v1.0.2) that Kindling writes. */
export interface OciMount {
  destination: string;
  type: string;
  source: string;
  options?: string[];
}
export interface OciSpec {
  ociVersion: string;
  process: {
    terminal: boolean;
    user: { uid: number; gid: number; additionalGids?: number[] };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: Record<"bounding" | "effective" | "permitted", string[]>;
    rlimits: { type: string; hard: number; soft: number }[];
    noNewPrivileges: boolean;
  };
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: OciMount[];
  linux: {
    cgroupsPath?: string;
    resources: {
      devices: { allow: boolean; access: string }[];
      memory?: { limit: number };
      cpu?: { quota: number; period: number };
    };
    namespaces: { type: string; path?: string }[];
    maskedPaths: string[];
    readonlyPaths: string[];
    seccomp?: OciSeccomp;
  };
}

export interface OciSpecInput {
  process: Required<ProcessSpec>;
  hostname: string;
  /** Bundle-relative or absolute path of the rootfs. */
  rootfs: string;
  volumes: VolumeSpec[];
  /** Extra bind mounts Kindling provides (e.g. /etc/hosts). */
  extraBinds?: VolumeSpec[];
  memoryMiB?: number;
  cpus?: number;
  /** RLIMIT_NOFILE for the process: the host's hard limit, which runc may set without raising it. */
  nofile: number;
  cgroupsPath?: string;
  /**
   * The network namespace: a path (Kindling's, set up by src/network) to join, "host" for none of its
   * own, or unset for a new empty one (loopback only).
   */
  netns?: string;
  /** The default seccomp filter (seccomp.ts); false leaves the process unfiltered. Default true. */
  seccomp?: boolean;
  /**
   * The rootfs as an overlay the runtime mounts at "/" in the container's own mount namespace
   * (runc): no host mount, so nothing to unmount; it goes when the container's last process does.
   */
  rootOverlay?: { lower: string; upper: string; work: string };
  /** `-t`: the runtime gives the process a pty of the container's own devpts. */
  terminal?: boolean;
}

/** Docker's default capability set: enough for package managers and servers, no admin powers. */
export const DEFAULT_CAPABILITIES = [
  "CAP_CHOWN",
  "CAP_DAC_OVERRIDE",
  "CAP_FSETID",
  "CAP_FOWNER",
  "CAP_MKNOD",
  "CAP_NET_RAW",
  "CAP_SETGID",
  "CAP_SETUID",
  "CAP_SETFCAP",
  "CAP_SETPCAP",
  "CAP_NET_BIND_SERVICE",
  "CAP_SYS_CHROOT",
  "CAP_KILL",
  "CAP_AUDIT_WRITE",
];

const CPU_PERIOD_US = 100_000;

/** The default mounts of `runc spec`, which both runc and runsc accept. */
function defaultMounts(): OciMount[] {
  return [
    { destination: "/proc", type: "proc", source: "proc" },
    {
      destination: "/dev",
      type: "tmpfs",
      source: "tmpfs",
      options: ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
      destination: "/dev/pts",
      type: "devpts",
      source: "devpts",
      options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    {
      destination: "/dev/shm",
      type: "tmpfs",
      source: "shm",
      options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    { destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"] },
    { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] },
    {
      destination: "/sys/fs/cgroup",
      type: "cgroup",
      source: "cgroup",
      options: ["nosuid", "noexec", "nodev", "relatime", "ro"],
    },
  ];
}

function bind(v: VolumeSpec): OciMount {
  // rprivate: mounts made inside never propagate back to the host, nor the host's into the container.
  return {
    destination: v.destination,
    type: "bind",
    source: v.source,
    options: ["rbind", "rprivate", v.readOnly ? "ro" : "rw"],
  };
}

/** The root overlay, first of the mounts: runc mounts it on the rootfs directory, the rest on it. */
function rootOverlayMount(o: { lower: string; upper: string; work: string }): OciMount {
  return {
    destination: "/",
    type: "overlay",
    source: "overlay",
    options: [`lowerdir=${o.lower}`, `upperdir=${o.upper}`, `workdir=${o.work}`],
  };
}

/** Builds config.json for `runc run` / `runsc run`. */
export function buildOciSpec(input: OciSpecInput): OciSpec {
  const p = input.process;
  const resources: OciSpec["linux"]["resources"] = { devices: [{ allow: false, access: "rwm" }] };
  if (input.memoryMiB !== undefined) resources.memory = { limit: input.memoryMiB * 1024 * 1024 };
  if (input.cpus !== undefined) {
    resources.cpu = { quota: Math.round(input.cpus * CPU_PERIOD_US), period: CPU_PERIOD_US };
  }
  return {
    ociVersion: "1.0.2-dev",
    process: {
      terminal: input.terminal === true,
      user: {
        uid: p.uid,
        gid: p.gid,
        ...(p.additionalGids.length > 0 ? { additionalGids: p.additionalGids } : {}),
      },
      args: p.args,
      env: p.env,
      cwd: p.cwd,
      capabilities: {
        bounding: DEFAULT_CAPABILITIES,
        effective: DEFAULT_CAPABILITIES,
        permitted: DEFAULT_CAPABILITIES,
      },
      rlimits: [{ type: "RLIMIT_NOFILE", hard: input.nofile, soft: input.nofile }],
      noNewPrivileges: false,
    },
    root: { path: input.rootfs, readonly: false },
    hostname: input.hostname,
    // Kindling's own binds first so a user's -v on the same path wins (later mounts cover earlier).
    mounts: [
      ...(input.rootOverlay ? [rootOverlayMount(input.rootOverlay)] : []),
      ...defaultMounts(),
      ...(input.extraBinds ?? []).map(bind),
      ...input.volumes.map(bind),
    ],
    linux: {
      ...(input.cgroupsPath ? { cgroupsPath: input.cgroupsPath } : {}),
      resources,
      namespaces: [
        { type: "pid" },
        ...(input.netns === "host"
          ? []
          : [input.netns ? { type: "network", path: input.netns } : { type: "network" }]),
        { type: "ipc" },
        { type: "uts" },
        { type: "mount" },
      ],
      maskedPaths: [
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/sys/firmware",
        "/proc/scsi",
      ],
      readonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
      ...(input.seccomp === false ? {} : { seccomp: defaultSeccomp() }),
    },
  };
}
