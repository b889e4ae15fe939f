/**
 * Kindling's own guest kernel: Debian's kernel source package built with the project's configuration
 * (guest/kernel/kindling.config, modelled on Firecracker's microVM guest configs: every driver built in,
 * no modules, PVH entry). Cached in $KINDLING_HOME/kernel/built/<source version>-<config digest>/.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { copyFile, mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { cpus } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { KindlingError } from "../util/errors.js";
import { exec } from "../util/exec.js";
import type { KindlingHome } from "../util/home.js";
import { Scope } from "../util/scope.js";

/** Where `apt-get install linux-source-6.1` puts the source tarball. */
const SOURCE_DIR = "/usr/src";

export interface BuiltKernel {
  /** the ELF vmlinux with the PVH note: QEMU -kernel and Firecracker boot it directly */
  vmlinux: string;
  /** Debian package version of the source, e.g. 6.1.158-1 */
  sourceVersion: string;
  /** sha256 of the configuration fragment it was built with */
  configDigest: string;
  /** the kernel release (`make kernelrelease`) */
  release: string;
  builtAt: string;
}

export interface KernelSource {
  tarball: string;
  /** linux-source-6.1 */
  package: string;
  version: string;
}

/** The configuration fragment shipped with Kindling (package root guest/kernel/kindling.config). */
export function kernelConfigPath(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, "package.json"))) {
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return path.join(dir, "guest", "kernel", "kindling.config");
}

export async function kernelConfigDigest(configPath = kernelConfigPath()): Promise<string> {
  const text = await readFile(configPath).catch(() => {
    throw new KindlingError(`kernel configuration ${configPath} is missing`);
  });
  return createHash("sha256").update(text).digest("hex");
}

function builtDir(home: KindlingHome): string {
  return path.join(home.kernel, "built");
}

/**
 * The built kernel for the current configuration, or null. Reads one small JSON per built kernel; a
 * kernel built from an older configuration is never used (its digest differs).
 */
export async function findBuiltKernel(home: KindlingHome, digest?: string): Promise<BuiltKernel | null> {
  const want = digest ?? (await kernelConfigDigest().catch(() => ""));
  if (!want) return null;
  const names = await readdir(builtDir(home)).catch(() => [] as string[]);
  let best: BuiltKernel | null = null;
  for (const name of names) {
    const k = await readFile(path.join(builtDir(home), name, "manifest.json"), "utf8")
      .then((t) => JSON.parse(t) as BuiltKernel)
      .catch(() => null);
    if (!k || k.configDigest !== want || !(await stat(k.vmlinux).catch(() => null))) continue;
    if (!best || k.builtAt > best.builtAt) best = k;
  }
  return best;
}

/** The newest installed linux-source-X.Y tarball and its Debian package version. */
export async function findKernelSource(): Promise<KernelSource> {
  const tarballs = (await readdir(SOURCE_DIR).catch(() => [] as string[]))
    .filter((f) => /^linux-source-[0-9.]+\.tar\.(xz|bz2|gz)$/.test(f))
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const last = tarballs.at(-1);
  if (!last) {
    throw new KindlingError(
      `no kernel source in ${SOURCE_DIR}: install it with apt-get install linux-source-6.1 (scripts/setup.sh)`,
    );
  }
  const pkg = last.replace(/\.tar\..*$/, "");
  const { stdout } = await exec("dpkg-query", ["-W", `-f=\${Version}`, pkg], { allowFailure: true });
  return { tarball: path.join(SOURCE_DIR, last), package: pkg, version: stdout.trim() || "unknown" };
}

export interface BuildProgress {
  phase: "unpack" | "configure" | "compile" | "done";
  /** compile steps done so far and an estimate of the total (from a build of this configuration) */
  done: number;
  total: number;
  /** the last step's object, e.g. fs/squashfs/super.o */
  current?: string;
}

export interface BuildOptions {
  jobs?: number;
  /** build even when a kernel for this source and configuration is cached */
  force?: boolean;
  onProgress?: (p: BuildProgress) => void;
  configPath?: string;
  /** Ctrl-C: the make process group is killed and the tree removed before buildKernel rejects */
  signal?: AbortSignal;
}

/** Compile steps of a build of guest/kernel/kindling.config from 6.1 (counted once; only for the bar). */
const ESTIMATED_STEPS = 1300;

/**
 * Builds the kernel (about 5 min on a quiet 2-core machine) unless it is cached. The tree is unpacked
 * into home.tmp and removed afterwards, on failure and on Ctrl-C too (the make process group is killed).
 */
export async function buildKernel(home: KindlingHome, opts: BuildOptions = {}): Promise<BuiltKernel> {
  const configPath = opts.configPath ?? kernelConfigPath();
  const digest = await kernelConfigDigest(configPath);
  const source = await findKernelSource();
  const key = `${source.version}-${digest.slice(0, 12)}`;
  const dest = path.join(builtDir(home), key);
  if (!opts.force) {
    const cached = await findBuiltKernel(home, digest);
    if (cached && cached.sourceVersion === source.version) return cached;
  }
  await mkdir(builtDir(home), { recursive: true });
  await mkdir(home.tmp, { recursive: true });
  await removeAbandonedTrees(home.tmp);
  const progress = (p: BuildProgress) => opts.onProgress?.(p);
  return Scope.with(async (scope) => {
    const work = path.join(home.tmp, `kernel-build-${process.pid}-${randomBytes(4).toString("hex")}`);
    await mkdir(work);
    scope.defer("kernel build tree", () => rm(work, { recursive: true, force: true }));
    const tree = path.join(work, "linux");
    await mkdir(tree);
    progress({ phase: "unpack", done: 0, total: ESTIMATED_STEPS });
    await run(scope, opts.signal, "tar", ["-xf", source.tarball, "-C", tree, "--strip-components=1"], work);
    progress({ phase: "configure", done: 0, total: ESTIMATED_STEPS });
    await run(scope, opts.signal, "make", ["tinyconfig"], tree);
    // the fragment on top of tinyconfig; olddefconfig resolves the rest to defaults
    await run(
      scope,
      opts.signal,
      "scripts/kconfig/merge_config.sh",
      ["-m", "-O", tree, ".config", configPath],
      tree,
    );
    await run(scope, opts.signal, "make", ["olddefconfig"], tree);
    await checkConfigApplied(path.join(tree, ".config"), configPath);
    const jobs = opts.jobs ?? Math.max(1, cpus().length);
    let done = 0;
    await run(scope, opts.signal, "make", [`-j${jobs}`, "vmlinux"], tree, (line) => {
      const m = /^\s+(CC|AS|LD|AR|HOSTCC|GEN|OBJCOPY)\s+(\S+)/.exec(line);
      if (!m) return;
      done++;
      progress({
        phase: "compile",
        done: Math.min(done, ESTIMATED_STEPS - 1),
        total: ESTIMATED_STEPS,
        current: m[2],
      });
    });
    const release = (await exec("make", ["-s", "kernelrelease"], { cwd: tree })).stdout.trim();
    const staged = path.join(work, "out");
    await mkdir(staged);
    await copyFile(path.join(tree, "vmlinux"), path.join(staged, "vmlinux"));
    await copyFile(path.join(tree, ".config"), path.join(staged, "config"));
    const kernel: BuiltKernel = {
      vmlinux: path.join(dest, "vmlinux"),
      sourceVersion: source.version,
      configDigest: digest,
      release,
      builtAt: new Date().toISOString(),
    };
    await writeFile(path.join(staged, "manifest.json"), `${JSON.stringify(kernel, null, 2)}\n`);
    // a VM may be booting the old one: move it aside first, then drop it
    const old = `${dest}.old-${process.pid}`;
    if (await stat(dest).catch(() => null)) await rename(dest, old);
    await rename(staged, dest);
    await rm(old, { recursive: true, force: true });
    progress({ phase: "done", done: ESTIMATED_STEPS, total: ESTIMATED_STEPS });
    return kernel;
  });
}

/** Every `CONFIG_X=y` / `=n` of the fragment must survive olddefconfig: a dropped one is a missing dependency. */
async function checkConfigApplied(dotConfig: string, fragment: string): Promise<void> {
  const final = await readFile(dotConfig, "utf8");
  const missing: string[] = [];
  for (const line of (await readFile(fragment, "utf8")).split("\n")) {
    const m = /^(CONFIG_[A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (!m) continue;
    const [, name, value] = m;
    const ok =
      value === "n"
        ? !new RegExp(`^${name}=`, "m").test(final)
        : new RegExp(`^${name}=${value.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`, "m").test(final);
    if (!ok) missing.push(`${name}=${value}`);
  }
  if (missing.length > 0) {
    throw new KindlingError(
      `kernel configuration not applied (missing dependencies?): ${missing.join(", ")}`,
    );
  }
}

/** Runs a build step in its own process group, killed with the group when the scope closes early. */
function run(
  scope: Scope,
  signal: AbortSignal | undefined,
  cmd: string,
  args: string[],
  cwd: string,
  onLine?: (l: string) => void,
) {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(new KindlingError("kernel build interrupted"));
    const child: ChildProcess = spawn(cmd, args, { cwd, detached: true, stdio: ["ignore", "pipe", "pipe"] });
    let finished = false;
    const kill = () => {
      if (finished || !child.pid) return;
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        // the group is gone already
      }
    };
    scope.defer(`${cmd} ${args[0] ?? ""}`, kill);
    signal?.addEventListener("abort", kill, { once: true });
    let tail = "";
    let partial = "";
    child.stdout!.on("data", (d: Buffer) => {
      const lines = (partial + d.toString()).split("\n");
      partial = lines.pop() ?? "";
      for (const l of lines) onLine?.(l);
    });
    child.stderr!.on("data", (d: Buffer) => {
      tail = (tail + d.toString()).slice(-2000);
    });
    child.on("error", (e: NodeJS.ErrnoException) => {
      finished = true;
      reject(e.code === "ENOENT" ? new KindlingError(`${cmd} is not installed (run scripts/setup.sh)`) : e);
    });
    child.on("close", (code, sig) => {
      finished = true;
      signal?.removeEventListener("abort", kill);
      if (code === 0) resolve();
      else if (signal?.aborted) reject(new KindlingError("kernel build interrupted"));
      else if (sig) reject(new KindlingError(`kernel build: ${cmd} ${args.join(" ")} killed by ${sig}`));
      else {
        const last = tail.trim().split("\n").slice(-3).join(" | ");
        reject(new KindlingError(`kernel build: ${cmd} ${args.join(" ")} failed (exit ${code}): ${last}`));
      }
    });
  });
}

/** A build killed with the machine leaves its tree in tmp: remove trees whose process is gone. */
async function removeAbandonedTrees(tmp: string): Promise<void> {
  for (const name of await readdir(tmp).catch(() => [] as string[])) {
    const m = /^kernel-build-(\d+)-/.exec(name);
    if (!m || isAlive(Number(m[1]))) continue;
    await rm(path.join(tmp, name), { recursive: true, force: true });
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
