import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { copyFile, mkdir, open, readdir, readFile, realpath, rename, rm, stat } from "node:fs/promises";
import { cpus } from "node:os";
import path from "node:path";
import { config } from "../config/index.js";
import { cpuinfo } from "../host/proc.js";
import { writeFileAtomic } from "../util/atomic.js";
import { KindlingError } from "../util/errors.js";
import { exec } from "../util/exec.js";
import type { KindlingHome } from "../util/home.js";
import { buildInitramfs, GUEST_MODULES, moduleLoadOrder, readModuleIndex } from "./initramfs.js";
import { findBuiltKernel } from "./kernel-build.js";

/** Debian's cloud kernel: virtio-mmio, virtio-blk, squashfs, overlay, vsock, virtio-fs (as modules). */
export const GUEST_KERNEL_PACKAGE = "linux-image-cloud-amd64";

export interface GuestKernel {
  /** uncompressed ELF kernel with the PVH note: boots with QEMU -kernel and Firecracker */
  vmlinux: string;
  /** lib/modules/<version>: modules.dep, modules.builtin and the modules the guest needs */
  modulesDir: string;
  /** kernel release, e.g. 6.1.0-56-cloud-amd64 */
  version: string;
}

const MANIFEST = "current.json";

/**
 * The guest kernel, fetched on first use: the versioned package `linux-image-cloud-amd64` depends on is
 * downloaded with apt, unpacked, its vmlinux extracted, and only the modules the guest needs kept.
 * Cached under home.kernel; later calls read one small JSON file and stat two paths.
 */
export async function ensureGuestKernel(
  home: KindlingHome,
  opts: { log?: (msg: string) => void } = {},
): Promise<GuestKernel> {
  const cached = await readCached(home);
  if (cached) return cached;
  await mkdir(home.kernel, { recursive: true });
  await mkdir(home.tmp, { recursive: true });
  const pkg = await resolveKernelPackage();
  const version = pkg.replace(/^linux-image-/, "");
  const work = path.join(home.tmp, `kernel-${process.pid}-${randomBytes(4).toString("hex")}`);
  await mkdir(work, { recursive: true });
  try {
    opts.log?.(`kindling: fetching guest kernel ${pkg} (first use)`);
    await exec("apt-get", ["download", pkg], { cwd: work }).catch((err) => {
      throw new KindlingError(`cannot download the guest kernel ${pkg} with apt: ${err.message}`);
    });
    const deb = (await readdir(work)).find((f) => f.endsWith(".deb"));
    if (!deb) throw new KindlingError(`apt-get download ${pkg} produced no .deb`);
    const tree = path.join(work, "x");
    await exec("dpkg-deb", ["-x", path.join(work, deb), tree]);
    // The .deb ships no modules.dep (its postinst runs depmod): make one.
    await exec("depmod", ["-b", tree, version]);
    // per module list: a kernel cached for an older list (without virtio_net) stays for the VMs using it
    // the real path: a home's kernel dir may be a symlink to a cache shared by homes that come and go
    const dest = path.join(await realpath(home.kernel), `${version}-${modulesTag()}`);
    const staged = path.join(work, "kernel");
    await mkdir(staged);
    await extractVmlinux(path.join(tree, "boot", `vmlinuz-${version}`), path.join(staged, "vmlinux"));
    await keepNeededModules(
      path.join(tree, "lib", "modules", version),
      path.join(staged, "modules", version),
    );
    await copyFile(path.join(tree, "boot", `config-${version}`), path.join(staged, "config"));
    await rename(staged, dest).catch(async () => {
      // another process published this kernel meanwhile: keep theirs (VMs may be using it); else replace
      if (await stat(path.join(dest, "modules", version, "modules.dep")).catch(() => null)) return;
      await rm(dest, { recursive: true, force: true });
      await rename(staged, dest);
    });
    const kernel: GuestKernel = {
      vmlinux: path.join(dest, "vmlinux"),
      modulesDir: path.join(dest, "modules", version),
      version,
    };
    await writeFileAtomic(
      path.join(home.kernel, MANIFEST),
      `${JSON.stringify({ ...kernel, modules: modulesTag() }, null, 2)}\n`,
    );
    return kernel;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Names the module list a cached kernel kept (keepNeededModules keeps only those). */
function modulesTag(): string {
  return createHash("sha256").update(GUEST_MODULES.join(",")).digest("hex").slice(0, 8);
}

async function readCached(home: KindlingHome): Promise<GuestKernel | null> {
  try {
    const recorded = JSON.parse(await readFile(path.join(home.kernel, MANIFEST), "utf8")) as GuestKernel & {
      modules?: string;
    };
    if (recorded.modules !== modulesTag()) return null; // cached with another module list: fetch again
    // Paths under this home's kernel dir, not as recorded: homes may share one dir through a
    // symlink, and the home that fetched it may be gone.
    const dir = path.join(home.kernel, path.basename(path.dirname(recorded.vmlinux)));
    const k: GuestKernel = {
      vmlinux: path.join(dir, "vmlinux"),
      modulesDir: path.join(dir, "modules", recorded.version),
      version: recorded.version,
    };
    await stat(k.vmlinux);
    await stat(path.join(k.modulesDir, "modules.dep"));
    return k;
  } catch {
    return null;
  }
}

/** linux-image-cloud-amd64 is a metapackage: the kernel is in the versioned package it depends on. */
async function resolveKernelPackage(): Promise<string> {
  const depends = () => exec("apt-cache", ["depends", GUEST_KERNEL_PACKAGE], { allowFailure: true });
  let { stdout, code } = await depends();
  if (code !== 0) {
    // a fresh machine may have empty package lists: refresh them once
    await exec("apt-get", ["update", "-qq"], { allowFailure: true });
    ({ stdout, code } = await depends());
  }
  if (code !== 0) {
    throw new KindlingError(
      `apt knows no ${GUEST_KERNEL_PACKAGE} (even after apt-get update): pass your own kernel (kernelPath)`,
    );
  }
  const m = /Depends:\s*(linux-image-[0-9][^\s]*)/.exec(stdout);
  if (!m) throw new KindlingError(`cannot find the kernel package ${GUEST_KERNEL_PACKAGE} depends on`);
  return m[1];
}

/** Compressed-kernel magics, as scripts/extract-vmlinux looks for them, with their decompressor. */
const PAYLOADS: { magic: Buffer; cmd: string }[] = [
  { magic: Buffer.from([0x02, 0x21, 0x4c, 0x18]), cmd: "lz4" },
  { magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), cmd: "zstd" },
  { magic: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), cmd: "xz" },
  { magic: Buffer.from([0x1f, 0x8b, 0x08]), cmd: "gzip" },
];

/**
 * vmlinux from a bzImage: find a compressed payload by its magic, decompress from there (trailing bytes
 * make the decompressor complain, which is expected), and keep the first result that is an ELF file.
 */
export async function extractVmlinux(vmlinuz: string, dest: string): Promise<void> {
  const image = await readFile(vmlinuz).catch(() => {
    throw new KindlingError(`kernel image ${vmlinuz} is missing`);
  });
  if (image.subarray(0, 4).toString("latin1") === "\x7fELF") {
    await copyFile(vmlinuz, dest);
    return;
  }
  for (const { magic, cmd } of PAYLOADS) {
    for (let at = image.indexOf(magic); at >= 0; at = image.indexOf(magic, at + 1)) {
      await decompressFrom(cmd, vmlinuz, at, dest);
      if (await isElf(dest)) return;
    }
  }
  await rm(dest, { force: true });
  throw new KindlingError(`no compressed vmlinux found in ${vmlinuz}`);
}

async function isElf(file: string): Promise<boolean> {
  const fh = await open(file, "r").catch(() => null);
  if (!fh) return false;
  try {
    const buf = Buffer.alloc(4);
    const { bytesRead } = await fh.read(buf, 0, 4, 0);
    return bytesRead === 4 && buf.toString("latin1") === "\x7fELF" && (await fh.stat()).size > 1 << 20;
  } finally {
    await fh.close();
  }
}

async function decompressFrom(cmd: string, file: string, offset: number, dest: string): Promise<void> {
  const out = await open(dest, "w");
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn(cmd, ["-dc"], { stdio: ["pipe", out.fd, "ignore"] });
      child.on("error", () => reject(new KindlingError(`${cmd} is not installed (run scripts/setup.sh)`)));
      child.stdin!.on("error", () => {}); // the decompressor stops reading at the end of its stream
      createReadStream(file, { start: offset }).on("error", reject).pipe(child.stdin!);
      child.on("close", () => resolve());
    });
  } finally {
    await out.close();
  }
}

/** Copies modules.dep/modules.builtin and just the modules the guest loads (and their dependencies). */
async function keepNeededModules(from: string, to: string): Promise<void> {
  const index = await readModuleIndex(from);
  const files = moduleLoadOrder(index, GUEST_MODULES);
  for (const rel of files) {
    await mkdir(path.dirname(path.join(to, rel)), { recursive: true });
    await copyFile(path.join(from, rel), path.join(to, rel));
  }
  for (const meta of ["modules.dep", "modules.builtin", "modules.order"]) {
    await copyFile(path.join(from, meta), path.join(to, meta)).catch(() => {});
  }
}

export interface GuestBootOptions {
  /** root drive in the guest (default /dev/vda) */
  root?: string;
  /** virtiofs: kindling.root is then a virtio-fs tag (the shared directory is the lower layer) */
  rootfsType?: "auto" | "squashfs" | "ext4" | "virtiofs";
  /** size limit of the tmpfs writable layer, e.g. "256m" */
  tmpfsSize?: string;
  /** ext4 drive for the writable layer instead of tmpfs, e.g. "/dev/vdb" */
  scratch?: string;
  agent?: "auto" | "virtio-serial" | "vsock";
  agentPort?: number;
  /** how the VM ends: poweroff (QEMU) or reboot (Firecracker exits on a guest reboot) */
  halt?: "poweroff" | "reboot";
  /** how the guest resets: kbd (the i8042: Firecracker; the default with halt reboot) or triple (a fault) */
  reset?: "kbd" | "triple";
  /** kernel messages on the console and more init markers */
  debug?: boolean;
  /** running under TCG: add what a TCG guest needs (DESIGN.md) */
  tcg?: boolean;
  /** more kernel parameters */
  extra?: string[];
}

/** The guest kernel command line: console, panic behaviour, the init's kindling.* options. */
export function guestCmdline(opts: GuestBootOptions = {}): string {
  // panic=-1 reboots at once on a panic; QEMU (-no-reboot) exits on a triple-fault reset (reboot=t),
  // Firecracker on an i8042 reset (reboot=k)
  const reset = opts.reset ?? (opts.halt === "reboot" ? "kbd" : "triple");
  const args = ["console=ttyS0", "panic=-1", reset === "kbd" ? "reboot=k" : "reboot=t"];
  if (!opts.debug) args.push("quiet", "loglevel=3");
  if (opts.tcg) args.push(...tcgKernelParams());
  if (opts.root) args.push(`kindling.root=${opts.root}`);
  if (opts.rootfsType) args.push(`kindling.rootfstype=${opts.rootfsType}`);
  if (opts.tmpfsSize) args.push(`kindling.tmpfs_size=${opts.tmpfsSize}`);
  if (opts.scratch) args.push(`kindling.scratch=${opts.scratch}`);
  if (opts.agent) args.push(`kindling.agent=${opts.agent}`);
  if (opts.agentPort) args.push(`kindling.agent_port=${opts.agentPort}`);
  if (opts.halt) args.push(`kindling.halt=${opts.halt}`);
  if (opts.debug) args.push("kindling.debug=1");
  for (const a of [...args, ...(opts.extra ?? [])]) {
    if (/\s/.test(a)) throw new KindlingError(`kernel parameter contains white space: ${JSON.stringify(a)}`);
  }
  return [...args, ...(opts.extra ?? [])].join(" ");
}

/**
 * What a guest under TCG needs: without tsc_early_khz it hangs after "Marking TSC unstable", and tsc=reliable
 * keeps it on the TSC under load. The rest is
 * boot time, measured with initcall_debug under TCG: cmos_init (~0.8 s, DESIGN.md), init_kprobe_trace
 * (~0.34 s), the crypto self-tests run by crypto_algapi_init (~0.34 s), probing 4 UARTs (~0.1 s).
 */
export function tcgKernelParams(): string[] {
  return [
    `tsc_early_khz=${hostTscKhz()}`,
    // Under TCG the guest's TSC is the host's clock, its steadiest source; on a loaded host the clocksource
    // watchdog saw jiffies lose ticks, marked the TSC unstable and switched to jiffies, after which the
    // guest's clock fell behind (measured: 100+ s within a minute at load 12). tsc=reliable skips that check.
    "tsc=reliable",
    "initcall_blacklist=cmos_init,init_kprobe_trace",
    "cryptomgr.notests",
    "8250.nr_uarts=1",
  ];
}

export interface GuestBoot {
  kernelPath: string;
  initrdPath?: string;
  cmdline: string;
  /** which kernel: "built <release>", "debian <release>" or "user" */
  kernelName?: string;
  deviceDiscovery?: "acpi" | "cmdline";
}

export type GuestKernelChoice = "auto" | "built" | "debian";

/** The kernel a VM boots: Kindling's built one when present (or asked for), else Debian's with modules. */
export async function chooseGuestKernel(
  home: KindlingHome,
  choice: GuestKernelChoice = config().guestKernel,
  log?: (msg: string) => void,
): Promise<{ vmlinux: string; modulesDir?: string; name: string }> {
  if (choice !== "debian") {
    const built = await findBuiltKernel(home);
    if (built) return { vmlinux: built.vmlinux, name: `built ${built.release}` };
    if (choice === "built") {
      throw new KindlingError(
        "KINDLING_GUEST_KERNEL=built but no kernel is built for this configuration: run kindling kernel build",
      );
    }
  }
  const kernel = await ensureGuestKernel(home, { log });
  return { vmlinux: kernel.vmlinux, modulesDir: kernel.modulesDir, name: `debian ${kernel.version}` };
}

/**
 * Kernel, initrd and command line for a VM. Default: Kindling's kernel (fetched on first use) and its
 * initramfs. With a user kernel, the initrd is the user's too (none when not given: a kernel with the
 * drivers built in, root mounted by the kernel; pass root=/dev/vda ro init=... in extra).
 */
export async function prepareGuestBoot(
  home: KindlingHome,
  opts: {
    kernelPath?: string;
    initrdPath?: string;
    boot?: GuestBootOptions;
    /** default: the guestKernel setting */
    kernel?: GuestKernelChoice;
    log?: (msg: string) => void;
  } = {},
): Promise<GuestBoot> {
  const cmdline = guestCmdline(opts.boot);
  if (opts.kernelPath) {
    return { kernelPath: opts.kernelPath, initrdPath: opts.initrdPath, cmdline, kernelName: "user" };
  }
  const kernel = await chooseGuestKernel(home, opts.kernel, opts.log);
  // built kernel: an initramfs of just /init (no modules to load); Debian's: /init and the modules
  const initrdPath = opts.initrdPath ?? (await buildInitramfs({ home, modulesDir: kernel.modulesDir }));
  // The built kernel runs without ACPI (acpi=off, see deviceDiscovery): it cannot power the VM off and
  // halts instead, so the host waited out its whole grace time (3 s) on every run. It ends the VM with a
  // reboot (a triple fault: QEMU's microvm has no i8042), which QEMU (-no-reboot) turns into an exit.
  const halt =
    !kernel.modulesDir && !opts.boot?.halt ? { halt: "reboot" as const, reset: "triple" as const } : {};
  return {
    kernelPath: kernel.vmlinux,
    initrdPath,
    cmdline: guestCmdline({ ...opts.boot, ...halt }),
    kernelName: kernel.name,
    ...(kernel.modulesDir ? {} : { deviceDiscovery: "cmdline" as const }),
  };
}

/**
 * Under TCG the guest's TSC is the host's: tell the guest its rate, or its clock runs fast or slow.
 * The kernel's own detected rate is the "cpu MHz" of /proc/cpuinfo at boot.
 */
function hostTscKhz(): number {
  try {
    const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(cpuinfo());
    if (m) return Math.round(Number.parseFloat(m[1]) * 1000);
  } catch {
    // not Linux, or no /proc: fall back below
  }
  const mhz = cpus()[0]?.speed ?? 0;
  return mhz > 0 ? mhz * 1000 : 2_000_000;
}
