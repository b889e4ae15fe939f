/**
 * Does /dev/kvm actually run our guests? Presence is not enough: on this development host it is PVM
 * (kvm_pvm, a paging-based KVM that boots only PVM-enabled kernels), where stock kernels hang.
 * Two ioctl-free checks: which KVM module provides /dev/kvm (/sys/module), and a tiny probe VM under
 * QEMU with -accel kvm that enters 64-bit long mode, as a Linux kernel does, then exits with a code.
 */
import { spawn } from "node:child_process";
import { constants } from "node:fs";
import { access, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

export type KvmFlavor = "intel" | "amd" | "pvm" | "unknown";

export interface KvmFacts {
  present: boolean;
  /** Read-write access for this user (QEMU and Firecracker open it O_RDWR). */
  accessible: boolean;
  flavor: KvmFlavor;
  /** Result of the long-mode probe VM, when it was run. */
  probe?: ProbeResult;
  usable: boolean;
  /** Why not usable (or what was checked, when usable). */
  detail: string;
}

export interface ProbeResult {
  ok: boolean;
  ms: number;
  detail: string;
}

/** Which module provides /dev/kvm. kvm_pvm alongside no kvm_intel/kvm_amd means PVM only. */
export async function kvmFlavor(sysModule = "/sys/module"): Promise<KvmFlavor> {
  const has = async (m: string) => !!(await stat(path.join(sysModule, m)).catch(() => null));
  if (await has("kvm_intel")) return "intel";
  if (await has("kvm_amd")) return "amd";
  if (await has("kvm_pvm")) return "pvm";
  return "unknown";
}

/**
 * A 64 KiB x86 firmware image (QEMU -bios) built from this assembly (GNU as, `ld -Ttext=0 --oformat binary`):
 *   real mode at F000:0000: cli; lgdt; zero 3 pages at 0x1000 and build PML4 -> PDPT -> PD (one 2 MiB page,
 *   identity); CR4.PAE; CR3=0x1000; EFER.LME; CR0.PE|PG; far jump to 64-bit code that does
 *   `mov $0x2a,%al; out %al,$0xf4; hlt` -> isa-debug-exit makes QEMU exit with (0x2a << 1) | 1 = 85.
 *   The reset vector (offset 0xFFF0) is `ljmp $0xF000,$0`.
 */
const PROBE_CODE =
  "fab800f08ed8660f0116a00031c08ec066bf0010000066b9000c00006631c0fc6766f3ab2666c7060010032000002666c7" +
  "060020033000002666c7060030830000000f20e06683c8200f22e066b8001000000f22d866b9800000c00f32660d000100" +
  "000f300f20c0660d010000800f22c066ea79000f00080066b810008ed88ed0b02ae6f4f4ebfd0000000000000000ffff00" +
  "00009aaf00ffff00000092cf00170088000f";
const RESET_VECTOR = "ea0000" + "00f0";
export const PROBE_EXIT_CODE = 85;

export function probeFirmware(): Buffer {
  const image = Buffer.alloc(0x10000);
  Buffer.from(PROBE_CODE, "hex").copy(image, 0);
  Buffer.from(RESET_VECTOR, "hex").copy(image, 0xfff0);
  return image;
}

/**
 * Boots the probe firmware with QEMU's `pc` machine (its default CPU model) and the given accelerator.
 * Under working KVM or TCG it exits with 85 in well under a second; under PVM it hangs (so: timeout).
 */
export async function probeAccel(
  accel: "kvm" | "tcg",
  opts: { qemu?: string; timeoutMs?: number } = {},
): Promise<ProbeResult> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "kindling-probe-"));
  const t0 = Date.now();
  try {
    const bios = path.join(dir, "probe.bin");
    await writeFile(bios, probeFirmware());
    const args = [
      ...["-machine", `pc,accel=${accel}`, "-bios", bios, "-m", "16"],
      ...["-display", "none", "-nodefaults", "-no-user-config", "-no-reboot"],
      ...["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
    ];
    const res = await runWithTimeout(opts.qemu ?? "qemu-system-x86_64", args, opts.timeoutMs ?? 3000);
    const ms = Date.now() - t0;
    if (res.code === PROBE_EXIT_CODE)
      return { ok: true, ms, detail: `a probe VM reached 64-bit mode under ${accel} in ${ms} ms` };
    const why = res.timedOut
      ? `hung (no exit within ${opts.timeoutMs ?? 3000} ms)`
      : `ended with ${res.signal ?? `status ${res.code}`}`;
    const err = res.stderr
      .trim()
      .split("\n")
      .filter((l) => !/warning:/.test(l))
      .slice(-2)
      .join("; ");
    return { ok: false, ms, detail: `a probe VM under ${accel} ${why}${err ? `: ${err}` : ""}` };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  timedOut: boolean;
}

function runWithTimeout(cmd: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    let timedOut = false;
    child.stderr!.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, stderr: e.message, timedOut: false });
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr, timedOut });
    });
  });
}

/** Everything about /dev/kvm; the probe runs only when QEMU is available and the cheap checks pass. */
export async function kvmFacts(
  opts: { qemu?: string; dev?: string; sysModule?: string } = {},
): Promise<KvmFacts> {
  const dev = opts.dev ?? "/dev/kvm";
  const present = !!(await stat(dev).catch(() => null));
  if (!present) {
    return {
      present,
      accessible: false,
      flavor: "unknown",
      usable: false,
      detail: `${dev} does not exist (no KVM: not enabled in the kernel or not exposed to this VM/container)`,
    };
  }
  const accessible = await access(dev, constants.R_OK | constants.W_OK).then(
    () => true,
    () => false,
  );
  const flavor = await kvmFlavor(opts.sysModule);
  if (!accessible) {
    return {
      present,
      accessible,
      flavor,
      usable: false,
      detail: `${dev} exists but this user cannot open it read-write (add it to the kvm group)`,
    };
  }
  if (flavor === "pvm") {
    return {
      present,
      accessible,
      flavor,
      usable: false,
      detail:
        `${dev} is provided by kvm_pvm (PVM) without VMX/SVM: only PVM-enabled guest kernels boot under it, stock kernels hang; ` +
        "and there guest kernel code is emulated at ~0.6 us per instruction (only guest user code runs natively), " +
        "so a kernel boot and every system call would be slower than TCG: Kindling uses TCG",
    };
  }
  if (!opts.qemu) {
    return {
      present,
      accessible,
      flavor,
      usable: true,
      detail: `${dev} (kvm_${flavor}) present; not probed (no QEMU)`,
    };
  }
  const probe = await probeAccel("kvm", { qemu: opts.qemu });
  return { present, accessible, flavor, probe, usable: probe.ok, detail: probe.detail };
}
