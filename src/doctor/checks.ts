/**
 * Host facts `kindling doctor` reports: binaries and their versions, devices, kernel features, the guest
 * kernel. Each check is independent and async; they run concurrently and never throw.
 */
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { config } from "../config/index.js";
import { findFreeLoop } from "../host/loop.js";
import { kernelFilesystems, kernelRelease } from "../host/proc.js";
import { findPlugin } from "../network/cni.js";
import { DEFAULT_PLUGIN_DIRS, defaultPluginTypes } from "../network/conflist.js";
import { errorMessage } from "../util/errors.js";
import { exec } from "../util/exec.js";
import type { KindlingHome } from "../util/home.js";
import { findExecutable } from "../vm/firecracker/process.js";
import { readGuestInit } from "../vm/guest-init.js";
import { defaultInitBinary } from "../vm/initramfs.js";
import { findBuiltKernel } from "../vm/kernel-build.js";

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

const sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/** An executable by name on PATH (plus the sbin directories, often missing from PATH) or by path. */
export async function locate(name: string): Promise<string | undefined> {
  if (name.includes("/")) return findExecutable(name);
  return (await findExecutable(name)) ?? (await firstOf(sbin.map((d) => path.join(d, name))));
}

async function firstOf(paths: string[]): Promise<string | undefined> {
  for (const p of paths) {
    const found = await findExecutable(p);
    if (found) return found;
  }
  return undefined;
}

/** A binary and the first line of its version output. */
export async function binaryCheck(
  label: string,
  name: string,
  versionArgs: string[],
  pick: (out: string) => string | undefined = firstLine,
): Promise<Check & { path?: string }> {
  const bin = await locate(name);
  if (!bin) return { name: label, ok: false, detail: `${name} not found on PATH` };
  const res = await exec(bin, versionArgs, { allowFailure: true, timeout: 5000 }).catch((e: Error) => ({
    stdout: "",
    stderr: e.message,
    code: 1,
  }));
  const version = pick(`${res.stdout}\n${res.stderr}`);
  if (!version)
    return {
      name: label,
      ok: false,
      path: bin,
      detail: `${bin} did not print a version: ${firstLine(res.stderr) ?? `status ${res.code}`}`,
    };
  return { name: label, ok: true, path: bin, detail: `${version} (${bin})` };
}

function firstLine(s: string): string | undefined {
  return s
    .split("\n")
    .map((l) => l.trim())
    .find((l) => l.length > 0);
}

export async function deviceCheck(label: string, dev: string, purpose: string): Promise<Check> {
  const st = await stat(dev).catch(() => null);
  if (!st) return { name: label, ok: false, detail: `${dev} does not exist (${purpose})` };
  return { name: label, ok: true, detail: `${dev} present (${purpose})` };
}

/** A file system the kernel can mount now (/proc/filesystems) or as a module (modules.dep). */
export async function filesystemCheck(fs: string, purpose: string): Promise<Check> {
  if ((await kernelFilesystems()).includes(fs)) {
    return { name: fs, ok: true, detail: `${fs} supported by the host kernel (${purpose})` };
  }
  const release = await kernelRelease();
  const dep = await readFile(`/lib/modules/${release}/modules.dep`, "utf8").catch(() => "");
  if (new RegExp(`/${fs}\\.ko`).test(dep)) {
    return { name: fs, ok: true, detail: `${fs} available as a module (${purpose})` };
  }
  return { name: fs, ok: false, detail: `the host kernel does not support ${fs} (${purpose})` };
}

/** A free loop device: runc/runsc mount the image's block file through one. */
export async function loopCheck(): Promise<Check> {
  if (!(await stat("/dev/loop-control").catch(() => null))) {
    return { name: "loop devices", ok: false, detail: "/dev/loop-control does not exist" };
  }
  const losetup = await locate("losetup");
  if (!losetup) return { name: "loop devices", ok: false, detail: "losetup (util-linux) not found" };
  try {
    return { name: "loop devices", ok: true, detail: `free loop device ${await findFreeLoop(losetup)}` };
  } catch (err) {
    return { name: "loop devices", ok: false, detail: `losetup -f: ${errorMessage(err)}` };
  }
}

/** fuse-native needs Debian's libfuse2 (libfuse.so.2) at run time. */
export async function libfuseCheck(): Promise<Check> {
  const ldconfig = await locate("ldconfig");
  const res = ldconfig ? await exec(ldconfig, ["-p"], { allowFailure: true, timeout: 5000 }) : undefined;
  const line = res?.stdout.split("\n").find((l) => l.includes("libfuse.so.2"));
  return line
    ? { name: "libfuse2", ok: true, detail: `${line.trim().split(" => ").pop()} (the lazy FUSE file)` }
    : {
        name: "libfuse2",
        ok: false,
        detail: "libfuse.so.2 not found (apt-get install libfuse2): the lazy FUSE file needs it",
      };
}

/**
 * The guest kernel VMs boot: Kindling's built one (kindling kernel build) when present and chosen, else
 * Debian's, cached under $KINDLING_HOME/kernel or fetchable with apt (src/vm/kernel.ts).
 */
export async function guestKernelCheck(home: KindlingHome): Promise<Check> {
  const name = "guest kernel";
  const choice = config().guestKernel;
  const built = choice === "debian" ? null : await findBuiltKernel(home);
  if (built) {
    return {
      name,
      ok: true,
      detail: `in use: Kindling's ${built.release} (built from source ${built.sourceVersion}, ${built.vmlinux}; no initramfs modules)`,
    };
  }
  if (choice === "built") {
    return {
      name,
      ok: false,
      detail: "KINDLING_GUEST_KERNEL=built but none is built: run kindling kernel build",
    };
  }
  try {
    const k = JSON.parse(await readFile(path.join(home.kernel, "current.json"), "utf8")) as {
      vmlinux: string;
      version: string;
    };
    await stat(k.vmlinux);
    return {
      name,
      ok: true,
      detail: `in use: Debian's ${k.version} with an initramfs of modules (${k.vmlinux}); kindling kernel build makes a faster one`,
    };
  } catch {
    // not cached: can apt fetch it?
  }
  const res = await exec("apt-cache", ["depends", "linux-image-cloud-amd64"], {
    allowFailure: true,
    timeout: 10_000,
  }).catch(() => undefined);
  const pkg = res && /Depends:\s*(linux-image-[0-9]\S*)/.exec(res.stdout)?.[1];
  return pkg
    ? { name, ok: true, detail: `not cached; fetched with apt on first use (${pkg})` }
    : {
        name,
        ok: false,
        detail:
          "not cached, and apt knows no linux-image-cloud-amd64 (run apt-get update, or boot your own kernel)",
      };
}

/** The guest init binary: present, and matching the checksum it was built or shipped with. */
export async function guestInitCheck(): Promise<Check> {
  const name = "guest init";
  const file = defaultInitBinary();
  try {
    const init = await readGuestInit(file);
    const how = init.verified ? "sha256 verified" : "no checksum file to verify against";
    return { name, ok: true, detail: `${file} (${how})` };
  } catch (err) {
    return { name, ok: false, detail: errorMessage(err) };
  }
}

/** The CNI plugins of Kindling's default network, and what they call: `--network bridge` needs them. */
export async function cniCheck(dirs: string[] = DEFAULT_PLUGIN_DIRS): Promise<Check> {
  const name = "CNI plugins";
  const missing: string[] = [];
  let where = "";
  const types = defaultPluginTypes();
  for (const type of types) {
    const found = await findPlugin(type, dirs).catch(() => undefined);
    if (found) where ||= path.dirname(found);
    else missing.push(type);
  }
  for (const tool of ["iptables", "tc", "nsenter"]) if (!(await locate(tool))) missing.push(tool);
  if (missing.length > 0) {
    return {
      name,
      ok: false,
      detail: `missing ${missing.join(", ")} (apt-get install containernetworking-plugins iptables iproute2): --network bridge will fail; none/host work`,
    };
  }
  return {
    name,
    ok: true,
    detail: `${types.join(", ")} in ${where}; iptables, tc, nsenter`,
  };
}
