/**
 * `kindling doctor`: for each runtime, can this host run it, and if not, why. Built from the host
 * checks (checks.ts, kvm.ts); printed as a table or as JSON.
 */
import { readdir } from "node:fs/promises";
import { config } from "../config/index.js";
import { type KvmFacts, kvmFacts } from "../host/kvm.js";
import { KindlingHome } from "../util/home.js";
import { FIRECRACKER_MISSING, findExecutable, firecrackerVersion } from "../vm/firecracker/process.js";
import {
  binaryCheck,
  type Check,
  cniCheck,
  deviceCheck,
  filesystemCheck,
  guestInitCheck,
  guestKernelCheck,
  libfuseCheck,
  locate,
  loopCheck,
} from "./checks.js";

/** Snapshot restore (src/vm/qemu-snapshot.ts): whether QEMU runs start from snapshots here, and which not. */
async function snapshotsCheck(home: KindlingHome, qemu: Check): Promise<Check> {
  const name = "snapshots";
  if (!config().vmSnapshots)
    return { name, ok: false, detail: "off (KINDLING_VM_SNAPSHOTS=0): every VM run boots" };
  if (!qemu.ok) return { name, ok: false, detail: `QEMU is missing: ${qemu.detail}` };
  const kept = (await readdir(home.snapshots).catch(() => [] as string[])).filter((n) =>
    /^[0-9a-f]{32}$/.test(n),
  );
  return {
    name,
    ok: true,
    detail:
      `QEMU runs restore a snapshot of a booted guest (${kept.length} kept in ${home.snapshots}; the first run of each VM shape makes one); ` +
      "not with --agent vsock or --rootfs virtiofs (vhost-user devices cannot be migrated) or the Firecracker-shaped profile",
  };
}

export type DoctorRuntime = "runc" | "runsc" | "qemu-kvm" | "qemu-tcg" | "firecracker";

export interface RuntimeStatus {
  runtime: DoctorRuntime;
  /** How `kindling run --runtime` names it. */
  runName: "runc" | "runsc" | "qemu" | "firecracker";
  usable: boolean;
  /** Why not (the failed requirements), or what it runs with. */
  reason: string;
  /** Names of the checks it needs. */
  requires: string[];
  /** Optional features this host lacks (e.g. --rootfs lazy without FUSE). */
  notes: string[];
}

export interface DoctorReport {
  runtimes: RuntimeStatus[];
  checks: Check[];
  kvm: KvmFacts;
  /** What `kindling run` picks for a VM when no --runtime is given. */
  defaultVmm: "firecracker" | "qemu";
  /** The guest agent's channel under QEMU when no --agent is given (vsock needs vhost-device-vsock). */
  qemuAgent: "vsock" | "virtio-serial";
}

export interface DoctorOptions {
  home?: KindlingHome;
}

export async function runDoctor(opts: DoctorOptions = {}): Promise<DoctorReport> {
  const home = opts.home ?? new KindlingHome(config().home);
  const qemuPath = await locate("qemu-system-x86_64");
  const [
    runc,
    runsc,
    qemu,
    firecracker,
    jailer,
    virtiofsd,
    mksquashfs,
    mkfs,
    kvm,
    vsock,
    vhostVsock,
    fuse,
    libfuse,
    loop,
    overlay,
    squashfs,
    kernel,
    guestInit,
    cni,
  ] = await Promise.all([
    binaryCheck("runc", "runc", ["--version"]),
    binaryCheck("runsc", "runsc", ["--version"]),
    binaryCheck("qemu-system-x86_64", "qemu-system-x86_64", ["--version"]),
    firecrackerCheck(),
    binaryCheck("jailer", config().jailer, ["--version"]),
    binaryCheck("virtiofsd", "/usr/lib/qemu/virtiofsd", ["--version"]),
    binaryCheck("mksquashfs", "mksquashfs", ["-version"]),
    binaryCheck("mkfs.ext4", "mkfs.ext4", ["-V"]),
    kvmFacts({ qemu: qemuPath }),
    deviceCheck(
      "/dev/vhost-vsock",
      "/dev/vhost-vsock",
      "kernel vsock under QEMU; Kindling uses vhost-device-vsock instead, so optional",
    ),
    binaryCheck("vhost-device-vsock", "vhost-device-vsock", ["--version"]),
    deviceCheck("/dev/fuse", "/dev/fuse", "the lazy FUSE file"),
    libfuseCheck(),
    loopCheck(),
    filesystemCheck("overlay", "the writable layer of runc/runsc"),
    filesystemCheck("squashfs", "mounting block images on the host"),
    guestKernelCheck(home),
    guestInitCheck(),
    cniCheck(),
  ]);
  const kvmCheck: Check = { name: "/dev/kvm", ok: kvm.usable, detail: kvm.detail };
  const snapshots = await snapshotsCheck(home, qemu);
  const checks: Check[] = [
    runc,
    runsc,
    qemu,
    firecracker,
    jailer,
    virtiofsd,
    mksquashfs,
    mkfs,
    kvmCheck,
    vsock,
    vhostVsock,
    fuse,
    libfuse,
    loop,
    overlay,
    squashfs,
    kernel,
    guestInit,
    cni,
    snapshots,
  ].map(({ name, ok, detail }) => ({ name, ok, detail }));

  const lazyNotes = (): string[] => {
    const missing = [fuse, libfuse].filter((c) => !c.ok);
    return missing.length ? [`--rootfs lazy unavailable: ${missing.map((c) => c.detail).join("; ")}`] : [];
  };
  const status = (
    runtime: DoctorRuntime,
    runName: RuntimeStatus["runName"],
    requires: Check[],
    good: string,
    notes: string[],
  ): RuntimeStatus => {
    const failed = requires.filter((c) => !c.ok);
    return {
      runtime,
      runName,
      usable: failed.length === 0,
      reason: failed.length === 0 ? good : failed.map((c) => c.detail).join("; "),
      requires: requires.map((c) => c.name),
      notes,
    };
  };
  const hostStorage = [loop, overlay, squashfs];
  const version = (c: Check) => c.detail.replace(/ \(\/.*\)$/, "");
  const runtimes = [
    status("runc", "runc", [runc, ...hostStorage], version(runc), lazyNotes()),
    status("runsc", "runsc", [runsc, ...hostStorage], `${version(runsc)}, --platform=ptrace`, [
      ...(kvm.usable ? [] : [`gVisor's --platform=kvm needs working KVM: ${kvm.detail}`]),
      ...lazyNotes(),
    ]),
    status("qemu-kvm", "qemu", [qemu, kvmCheck, kernel, guestInit], `${version(qemu)} with KVM`, [
      ...(virtiofsd.ok ? [] : [`--rootfs virtiofs unavailable: ${virtiofsd.detail}`]),
      ...lazyNotes(),
    ]),
    status(
      "qemu-tcg",
      "qemu",
      [qemu, kernel, guestInit],
      `${version(qemu)} with TCG (software emulation, slower)`,
      [...(virtiofsd.ok ? [] : [`--rootfs virtiofs unavailable: ${virtiofsd.detail}`]), ...lazyNotes()],
    ),
    status(
      "firecracker",
      "firecracker",
      [firecracker, kvmCheck, kernel, guestInit],
      `${version(firecracker)} with KVM`,
      [
        ...(jailer.ok ? [] : ["jailer not found: --jailer unavailable"]),
        "no virtio-fs in Firecracker: --rootfs virtiofs needs QEMU",
        ...lazyNotes(),
      ],
    ),
  ];
  const qemuAgent = vhostVsock.ok && !snapshots.ok ? "vsock" : "virtio-serial";
  const agentNote = snapshots.ok
    ? "guest agent over virtio-serial (it migrates, so runs restore snapshots); --agent vsock for vsock (those runs boot)"
    : vhostVsock.ok
      ? "guest agent over vsock (vhost-device-vsock, Firecracker's hybrid vsock); --agent serial for virtio-serial"
      : `guest agent over virtio-serial (vsock needs vhost-device-vsock: ${vhostVsock.detail})`;
  for (const r of runtimes) if (r.runName === "qemu") r.notes.unshift(agentNote);
  const fc = runtimes.find((r) => r.runtime === "firecracker")!;
  return {
    runtimes,
    checks,
    kvm,
    defaultVmm: fc.usable ? "firecracker" : "qemu",
    qemuAgent,
  };
}

async function firecrackerCheck(): Promise<Check> {
  const bin = await findExecutable(config().firecracker);
  if (!bin)
    return {
      name: "firecracker",
      ok: false,
      detail: FIRECRACKER_MISSING.replace(/; run `kindling doctor`$/, ""),
    };
  try {
    return {
      name: "firecracker",
      ok: true,
      detail: `Firecracker v${await firecrackerVersion(bin)} (${bin})`,
    };
  } catch (err) {
    return { name: "firecracker", ok: false, detail: `${bin} --version failed: ${(err as Error).message}` };
  }
}

/**
 * The VMM `kindling run` uses when none is named: Firecracker where it is installed and KVM really runs
 * guests, else QEMU (which falls back to TCG). Cheap when firecracker is absent: no KVM probe then.
 */
export async function pickDefaultVmm(): Promise<"firecracker" | "qemu"> {
  const fc = await findExecutable(config().firecracker);
  if (!fc) return "qemu";
  const kvm = await kvmFacts({ qemu: await locate("qemu-system-x86_64") });
  return kvm.usable ? "firecracker" : "qemu";
}

const LABELS: Record<DoctorRuntime, string> = {
  runc: "runc",
  runsc: "runsc (gVisor)",
  "qemu-kvm": "qemu (kvm)",
  "qemu-tcg": "qemu (tcg)",
  firecracker: "firecracker",
};

/** The human report: one row per runtime, then every host check. */
export function formatReport(r: DoctorReport): string {
  const lines: string[] = [];
  const w = Math.max(...Object.values(LABELS).map((l) => l.length)) + 2;
  lines.push(`${"RUNTIME".padEnd(w)}${"USABLE".padEnd(8)}WHY`);
  for (const rt of r.runtimes) {
    lines.push(`${LABELS[rt.runtime].padEnd(w)}${(rt.usable ? "yes" : "no").padEnd(8)}${rt.reason}`);
    for (const n of rt.notes) lines.push(`${"".padEnd(w + 8)}note: ${n}`);
  }
  lines.push("");
  const cw = Math.max(...r.checks.map((c) => c.name.length)) + 2;
  lines.push(`${"CHECK".padEnd(cw)}${"OK".padEnd(5)}DETAIL`);
  for (const c of r.checks) lines.push(`${c.name.padEnd(cw)}${(c.ok ? "ok" : "--").padEnd(5)}${c.detail}`);
  lines.push("");
  const fc = r.runtimes.find((x) => x.runtime === "firecracker")!;
  lines.push(
    `default VMM for \`kindling run\`: ${r.defaultVmm}${r.defaultVmm === "qemu" ? ` (firecracker: ${fc.reason})` : ""}`,
  );
  lines.push(`guest agent channel under qemu (no --agent): ${r.qemuAgent}`);
  return `${lines.join("\n")}\n`;
}
