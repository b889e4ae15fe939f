import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readdir, readFile, rm, stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { writeFileAtomic } from "../util/atomic.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { readGuestInit } from "./guest-init.js";

/**
 * What the guest needs beyond a built-in kernel: the virtio-mmio transport, block drives, the
 * virtio-serial agent port (QEMU), vsock (Firecracker), the root and writable-layer file systems,
 * virtio-fs shares. Their dependencies come from modules.dep, never from this list.
 */
export const GUEST_MODULES = [
  "virtio_mmio",
  "virtio_blk",
  "virtio_console",
  "virtio_net", // eth0 (its failover deps come from modules.dep)
  "squashfs",
  "overlay",
  "ext4",
  "vmw_vsock_virtio_transport",
  "virtiofs",
];

/** Where the init finds the list of modules to load, in order (one absolute path per line). */
export const MODULE_LIST_PATH = "kindling/modules";

export interface ModuleIndex {
  /** module name ("virtio_blk") -> path relative to the modules dir and its dependencies' paths */
  byName: Map<string, { path: string; deps: string[] }>;
  builtin: Set<string>;
}

/** "kernel/drivers/block/virtio_blk.ko.xz" -> "virtio_blk" (modprobe treats - and _ alike). */
export function moduleName(p: string): string {
  return path
    .basename(p)
    .replace(/\.ko(\.(xz|zst|gz))?$/, "")
    .replace(/-/g, "_");
}

export async function readModuleIndex(modulesDir: string): Promise<ModuleIndex> {
  const depText = await readFile(path.join(modulesDir, "modules.dep"), "utf8").catch(() => {
    throw new KindlingError(`${modulesDir}/modules.dep is missing: run depmod for this kernel`);
  });
  const byName = new Map<string, { path: string; deps: string[] }>();
  for (const line of depText.split("\n")) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const file = line.slice(0, colon);
    const deps = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter(Boolean);
    byName.set(moduleName(file), { path: file, deps });
  }
  const builtinText = await readFile(path.join(modulesDir, "modules.builtin"), "utf8").catch(() => "");
  const builtin = new Set(builtinText.split("\n").filter(Boolean).map(moduleName));
  return { byName, builtin };
}

/**
 * Module files to load for `names`, dependencies first (a depth-first post-order over modules.dep,
 * which lists each module's full dependency set). Built-in modules are skipped; an unknown one is an error.
 */
export function moduleLoadOrder(index: ModuleIndex, names: string[]): string[] {
  const byPath = new Map([...index.byName.values()].map((m) => [m.path, m]));
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    // modprobe loads a module's dependency list from its end: keep that order among independent ones
    for (const dep of [...(byPath.get(file)?.deps ?? [])].reverse()) visit(dep);
    order.push(file);
  };
  for (const raw of names) {
    const name = raw.replace(/-/g, "_");
    const mod = index.byName.get(name);
    if (mod) visit(mod.path);
    else if (!index.builtin.has(name)) throw new KindlingError(`guest kernel has no module ${raw}`);
  }
  return order;
}

export interface CpioEntry {
  /** path inside the archive, without a leading slash */
  name: string;
  /** full st_mode (type and permissions) */
  mode: number;
  data?: Buffer;
  rdevMajor?: number;
  rdevMinor?: number;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFCHR = 0o020000;

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** A newc ("070701") cpio archive, deterministic: inode numbers by position, mtime/uid/gid 0. */
export function newcArchive(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const hex = (n: number) => n.toString(16).padStart(8, "0");
  const push = (e: CpioEntry, ino: number) => {
    const name = Buffer.from(`${e.name}\0`);
    const size = e.data?.length ?? 0;
    const isDir = (e.mode & 0o170000) === S_IFDIR;
    const fields = [ino, e.mode, 0, 0, isDir ? 2 : 1, 0, size, 0, 0, e.rdevMajor ?? 0, e.rdevMinor ?? 0];
    const header = `070701${fields.map(hex).join("")}${hex(name.length)}${hex(0)}`;
    parts.push(Buffer.from(header, "ascii"), name, Buffer.alloc(pad4(110 + name.length)));
    if (e.data && size > 0) parts.push(e.data, Buffer.alloc(pad4(size)));
  };
  entries.forEach((e, i) => {
    push(e, i + 1);
  });
  push({ name: "TRAILER!!!", mode: 0 }, 0);
  return Buffer.concat(parts);
}

/** Directory entries for every parent of `files`, parents before children. */
function parentDirs(files: string[]): CpioEntry[] {
  const dirs = new Set<string>();
  for (const f of files) {
    for (let d = path.posix.dirname(f); d !== "." && d !== "/"; d = path.posix.dirname(d)) dirs.add(d);
  }
  return [...dirs].sort().map((name) => ({ name, mode: S_IFDIR | 0o755 }));
}

/** The init binary built by `make -C guest` (guest/build/kindling-init at the package root). */
export function defaultInitBinary(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, "package.json"))) {
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return path.join(dir, "guest", "build", "kindling-init");
}

async function decompressed(file: string): Promise<Buffer> {
  const tool = file.endsWith(".xz")
    ? "xz"
    : file.endsWith(".zst")
      ? "zstd"
      : file.endsWith(".gz")
        ? "gzip"
        : "";
  if (!tool) return readFile(file);
  // The guest loads modules with plain finit_module: decompress on the host, whatever the kernel supports.
  return new Promise((resolve, reject) => {
    const child = spawn(tool, ["-dc", file], { stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.on("error", () => reject(new KindlingError(`${tool} is not installed (run scripts/setup.sh)`)));
    child.on("close", (code) =>
      code === 0 ? resolve(Buffer.concat(out)) : reject(new KindlingError(`${tool} -dc ${file} failed`)),
    );
  });
}

export interface InitramfsOptions {
  home: KindlingHome;
  /** lib/modules/<version> of the guest kernel; none: a kernel with every driver built in (only /init) */
  modulesDir?: string;
  /** the init binary; default guest/build/kindling-init */
  initBinary?: string;
  /** module names; default GUEST_MODULES */
  modules?: string[];
}

/**
 * Builds (or finds in the cache) the initramfs: /init, the modules in load order, and the list file the
 * init reads. Returns the path of a cpio named by the sha256 of its content.
 */
export async function buildInitramfs(opts: InitramfsOptions): Promise<string> {
  const initBinary = opts.initBinary ?? defaultInitBinary();
  const init = (await readGuestInit(initBinary)).bytes;
  const files: CpioEntry[] = [];
  if (opts.modulesDir) {
    const index = await readModuleIndex(opts.modulesDir);
    const order = moduleLoadOrder(index, opts.modules ?? GUEST_MODULES);
    const version = path.basename(opts.modulesDir);
    const loadList: string[] = [];
    for (const rel of order) {
      const name = `lib/modules/${version}/${rel.replace(/\.(xz|zst|gz)$/, "")}`;
      files.push({ name, mode: S_IFREG | 0o644, data: await decompressed(path.join(opts.modulesDir, rel)) });
      loadList.push(`/${name}`);
    }
    files.push({
      name: MODULE_LIST_PATH,
      mode: S_IFREG | 0o644,
      data: Buffer.from(`${loadList.join("\n")}\n`),
    });
  }
  files.push({ name: "init", mode: S_IFREG | 0o755, data: init });
  const fixed: CpioEntry[] = [
    { name: "dev", mode: S_IFDIR | 0o755 },
    { name: "dev/console", mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 },
    { name: "proc", mode: S_IFDIR | 0o755 },
    { name: "sys", mode: S_IFDIR | 0o755 },
    { name: "mnt", mode: S_IFDIR | 0o755 },
  ];
  const dirs = parentDirs(files.map((f) => f.name)).filter((d) => !fixed.some((x) => x.name === d.name));
  const archive = newcArchive([...fixed, ...dirs, ...files]);
  const sha = createHash("sha256").update(archive).digest("hex");
  const dest = path.join(opts.home.kernel, `initramfs-${sha.slice(0, 32)}.cpio`);
  const existing = await stat(dest).catch(() => null);
  if (existing?.size !== archive.length) {
    await writeFileAtomic(dest, archive);
    await pruneOldInitramfs(opts.home.kernel, dest);
  }
  return dest;
}

/** Each new init build makes a new initramfs: drop the ones unused for a day (none can be booting). */
async function pruneOldInitramfs(dir: string, keep: string): Promise<void> {
  const dayAgo = Date.now() - 24 * 3600 * 1000;
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const file = path.join(dir, name);
    if (!/^initramfs-[0-9a-f]+\.cpio$/.test(name) || file === keep) continue;
    const st = await stat(file).catch(() => null);
    if (st && st.atimeMs < dayAgo && st.mtimeMs < dayAgo) await rm(file, { force: true });
  }
}
