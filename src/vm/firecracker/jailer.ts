/**
 * Firecracker's jailer: it chroots into <chroot-base-dir>/<exec-file name>/<id>/root, drops to uid/gid,
 * joins cgroups/namespaces and execs firecracker. Everything firecracker opens must therefore be inside
 * that root, and every path it is given is a path inside the jail. This module renders the jailer's
 * arguments and lays out the chroot (hard links, copies or bind mounts of the kernel and drives).
 * The jailer itself cannot run on the development host (no firecracker, no usable KVM): see docs/firecracker.md.
 */
import { chown, copyFile, link, mkdir, readdir, rm, rmdir, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { KindlingError } from "../../util/errors.js";
import { exec } from "../../util/exec.js";
import type { VmSpec } from "../spec.js";

export interface JailerOptions {
  /** The firecracker binary the jailer copies into the jail and execs. */
  execFile: string;
  uid: number;
  gid: number;
  /** Default /srv/jailer, as in the jailer. */
  chrootBaseDir?: string;
  cgroupVersion?: 1 | 2;
  /** e.g. { "cpu.max": "50000 100000" } -> --cgroup cpu.max=50000 100000 */
  cgroups?: Record<string, string>;
  parentCgroup?: string;
  /** Path of a network namespace to join (/var/run/netns/NAME). */
  netns?: string;
  newPidNs?: boolean;
  /** e.g. { "no-file": 1024 } -> --resource-limit no-file=1024 */
  resourceLimits?: Record<string, number>;
  /** The jailer binary; default $KINDLING_JAILER or `jailer` on PATH. */
  jailerBin?: string;
}

/** Where things are, both as the host sees them and as firecracker (inside the chroot) sees them. */
export interface JailLayout {
  id: string;
  /** Host path of <base>/<exec name>/<id>: removed on cleanup. */
  jailDir: string;
  /** Host path of the chroot's root. */
  root: string;
  files: JailFile[];
  /** In-jail path -> host path. */
  hostPath(inJail: string): string;
}

export interface JailFile {
  kind: "kernel" | "initrd" | "drive";
  id: string;
  source: string;
  /** Absolute path inside the jail, e.g. /drives/rootfs. */
  inJail: string;
  readOnly: boolean;
}

/** The jailer accepts ids of at most 64 alphanumerics and hyphens. */
export function checkJailId(id: string): void {
  if (!/^[A-Za-z0-9-]{1,64}$/.test(id)) {
    throw new KindlingError(`jailer id ${JSON.stringify(id)} must be 1-64 letters, digits or hyphens`);
  }
}

export function planJail(spec: VmSpec, id: string, opts: JailerOptions): JailLayout {
  checkJailId(id);
  const base = path.resolve(opts.chrootBaseDir ?? "/srv/jailer");
  const jailDir = path.join(base, path.basename(opts.execFile), id);
  const root = path.join(jailDir, "root");
  const files: JailFile[] = [
    { kind: "kernel", id: "kernel", source: spec.kernelPath, inJail: "/boot/vmlinux", readOnly: true },
  ];
  if (spec.initrdPath) {
    files.push({
      kind: "initrd",
      id: "initrd",
      source: spec.initrdPath,
      inJail: "/boot/initrd",
      readOnly: true,
    });
  }
  for (const d of spec.drives) {
    files.push({
      kind: "drive",
      id: d.id,
      source: d.path,
      inJail: `/drives/${d.id.replace(/[^A-Za-z0-9_.-]/g, "_")}`,
      readOnly: d.readOnly,
    });
  }
  return { id, jailDir, root, files, hostPath: (p) => path.join(root, p) };
}

/** The jailer's command line; firecrackerArgs follow `--` and are passed on to firecracker. */
export function renderJailerArgs(id: string, opts: JailerOptions, firecrackerArgs: string[]): string[] {
  checkJailId(id);
  // The jailer refuses an exec file whose name does not contain "firecracker".
  if (!path.basename(opts.execFile).includes("firecracker")) {
    throw new KindlingError(`the jailer only runs an exec file named *firecracker*, not ${opts.execFile}`);
  }
  const args = [
    "--id",
    id,
    "--exec-file",
    opts.execFile,
    "--uid",
    String(opts.uid),
    "--gid",
    String(opts.gid),
    "--chroot-base-dir",
    path.resolve(opts.chrootBaseDir ?? "/srv/jailer"),
  ];
  if (opts.cgroupVersion) args.push("--cgroup-version", String(opts.cgroupVersion));
  if (opts.parentCgroup) args.push("--parent-cgroup", opts.parentCgroup);
  for (const [k, v] of Object.entries(opts.cgroups ?? {})) args.push("--cgroup", `${k}=${v}`);
  if (opts.netns) args.push("--netns", opts.netns);
  if (opts.newPidNs) args.push("--new-pid-ns");
  for (const [k, v] of Object.entries(opts.resourceLimits ?? {})) args.push("--resource-limit", `${k}=${v}`);
  // No --daemonize: Kindling supervises the process (same pid as the firecracker it execs).
  return [...args, "--", ...firecrackerArgs];
}

export type Placement = "link" | "copy" | "bind";

/**
 * Puts each file into the jail and hands it to uid/gid. A hard link is free and keeps one copy; across
 * file systems (EXDEV) the kernel and initrd are copied (small), but drives are bind-mounted, since
 * copying the lazy image file would read all of it. (The jailer bind-mounts the chroot onto itself with
 * MS_REC before pivot_root, so these file bind mounts are visible inside the jail.)
 * Returns how each file was placed and an undo.
 */
export async function prepareJail(
  layout: JailLayout,
  opts: Pick<JailerOptions, "uid" | "gid" | "parentCgroup">,
  extraFiles: string[] = [],
): Promise<{ placed: Record<string, Placement>; undo: () => Promise<void> }> {
  const placed: Record<string, Placement> = {};
  const binds: string[] = [];
  const undo = async () => {
    for (const b of binds.reverse()) await exec("umount", [b], { allowFailure: true });
    await rm(layout.jailDir, { recursive: true, force: true });
    await removeJailCgroups(layout, opts.parentCgroup);
  };
  try {
    await mkdir(layout.root, { recursive: true });
    for (const dir of ["/boot", "/drives", "/run", "/logs"])
      await mkdir(layout.hostPath(dir), { recursive: true });
    await chown(layout.hostPath("/run"), opts.uid, opts.gid);
    await chown(layout.hostPath("/logs"), opts.uid, opts.gid);
    for (const f of layout.files) {
      const dest = layout.hostPath(f.inJail);
      await rm(dest, { force: true });
      try {
        await link(f.source, dest);
        placed[f.id] = "link";
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EXDEV") throw err;
        if (f.kind === "drive") {
          await writeFile(dest, "");
          await exec("mount", ["--bind", ...(f.readOnly ? ["-o", "ro"] : []), f.source, dest]);
          binds.push(dest);
          placed[f.id] = "bind";
        } else {
          await copyFile(f.source, dest);
          placed[f.id] = "copy";
        }
      }
      // The jailed VMM must be able to open it. A hard link shares the inode, so chown would change the
      // source's owner too: skip it for read-only files that everyone may read already. A read-only file
      // the jail cannot own (a FUSE file refuses chown) is left as it is; Firecracker names it if it fails.
      const worldReadable = ((await stat(dest)).mode & 0o004) !== 0;
      if (!f.readOnly) await chown(dest, opts.uid, opts.gid);
      else if (!worldReadable) await chown(dest, opts.uid, opts.gid).catch(() => undefined);
    }
    // Log and metrics files firecracker opens but does not create.
    for (const p of extraFiles) {
      await writeFile(layout.hostPath(p), "", { flag: "a" });
      await chown(layout.hostPath(p), opts.uid, opts.gid);
    }
  } catch (err) {
    await undo();
    throw new KindlingError(`preparing the jail ${layout.root} failed: ${(err as Error).message}`);
  }
  return { placed, undo };
}

/**
 * The jailer leaves the cgroups it made (<parent>/<id>, parent defaulting to the exec file's name) behind.
 * Best effort, v2 and v1 layouts: rmdir removes only empty cgroups, so a live one is never touched.
 */
async function removeJailCgroups(layout: JailLayout, parentCgroup?: string): Promise<void> {
  const parent = parentCgroup ?? path.basename(path.dirname(layout.jailDir));
  const base = "/sys/fs/cgroup";
  const dirs = [path.join(base, parent, layout.id)];
  for (const controller of await readdir(base).catch(() => [] as string[])) {
    dirs.push(path.join(base, controller, parent, layout.id));
  }
  for (const d of dirs) await rmdir(d).catch(() => undefined);
}
