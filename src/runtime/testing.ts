/** Helpers for tests and benchmarks of runtimes: a busybox SquashFS image and leak checks. */
import { chmod, copyFile, mkdir, readdir, stat, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import type { Readable } from "node:stream";
import { attachedLoops } from "../host/loop.js";
import { mountsUnder } from "../host/mounts.js";
import { listPids, readCgroup, readCmdline } from "../host/proc.js";
import { stopIdleShared } from "../lazy/index.js";
import { exec } from "../util/exec.js";
import { KindlingHome } from "../util/home.js";

/**
 * Builds a small image tree from the host's static busybox: /bin/<applet> links, a root and an
 * "app" user (1000:1000, also in group "extra" 2000), /tmp, and /data/hello.
 */
export async function buildBusyboxTree(dir: string): Promise<void> {
  for (const d of ["bin", "etc", "tmp", "data", "root", "home/app"]) {
    await mkdir(path.join(dir, d), { recursive: true });
  }
  await copyFile("/bin/busybox", path.join(dir, "bin/busybox"));
  await chmod(path.join(dir, "bin/busybox"), 0o755);
  const applets = (await exec("/bin/busybox", ["--list"])).stdout.split("\n").filter(Boolean);
  for (const a of applets) {
    if (a !== "busybox") await symlink("busybox", path.join(dir, "bin", a));
  }
  await chmod(path.join(dir, "tmp"), 0o1777);
  await writeFile(
    path.join(dir, "etc/passwd"),
    "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
  );
  await writeFile(path.join(dir, "etc/group"), "root:x:0:\napp:x:1000:\nextra:x:2000:app\n");
  await writeFile(path.join(dir, "data/hello"), "hello from the image\n");
}

/** A SquashFS of `tree` at `file` (zstd level 3, as images are built). */
export async function makeSquashfs(tree: string, file: string): Promise<void> {
  await exec("mksquashfs", [
    tree,
    file,
    "-noappend",
    "-quiet",
    "-no-progress",
    "-comp",
    "zstd",
    "-Xcompression-level",
    "3",
  ]);
}

/** Reads a stream to its end as text. */
export async function readAll(stream: Readable | null): Promise<string> {
  if (!stream) return "";
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts).toString();
}

/**
 * What a run under `home` might have left on the host: mounts under it (overlay, squashfs, lazy
 * FUSE), loop devices on `imageFile` or on files under `home`, processes naming `home` (runc,
 * runsc, lazy daemons), processes and cgroups of containers `ids`, and run dirs. Empty when clean.
 * Shared lazy daemons that no live process uses are stopped first: they would leave on their own
 * after their idle time; one that a dead run still seems to use is reported.
 */
export async function leftovers(home: string, imageFile?: string, ids: string[] = []): Promise<string[]> {
  await stopIdleShared(new KindlingHome(home));
  const out: string[] = [];
  for (const m of await mountsUnder(home)) out.push(`mount ${m.mountPoint}`);
  for (const line of await attachedLoops()) {
    if (line.includes(`(${home}/`) || (imageFile && line.includes(`(${imageFile})`)))
      out.push(`loop ${line}`);
  }
  for (const pid of await listPids()) {
    if (pid === process.pid) continue;
    const cmd = await readCmdline(pid);
    if (cmd.includes(`${home}/`)) out.push(`process ${pid}: ${cmd.replaceAll("\0", " ")}`);
    const cgroup = await readCgroup(pid);
    for (const id of ids) {
      if (cgroup.includes(`/kindling/${id}\n`)) out.push(`process ${pid} of container ${id}`);
    }
  }
  for (const id of ids) {
    const dir = `/sys/fs/cgroup/memory/kindling/${id}`;
    if (
      await stat(dir).then(
        () => true,
        () => false,
      )
    )
      out.push(`cgroup ${dir}`);
  }
  // Kindling gives each run its own runtime root (removed with the run dir); the default root
  // must not know our containers either.
  const listed = (await exec("runc", ["list", "-q"], { allowFailure: true })).stdout.split("\n");
  for (const id of ids) if (listed.includes(id)) out.push(`runc list: ${id}`);
  const runs = await readdir(path.join(home, "run")).catch(() => []);
  for (const r of runs) out.push(`run dir ${r}`);
  return out;
}
