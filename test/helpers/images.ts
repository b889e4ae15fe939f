/** Small test images made here, without the image pipeline: a busybox tree and its SquashFS. */
import { chmod, copyFile, mkdir, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { exec } from "../../src/util/exec.js";

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
