/**
 * A two-layer busybox image for VM runtime tests, imported into a fresh home whose kernel cache is the
 * shared one (.cache/vm-test-home/kernel: fetched with apt once, not per test home).
 */
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { importImage } from "../../src/image/import.js";
import { stopIdleShared } from "../../src/lazy/index.js";
import { removeHomeNetwork } from "../../src/network/conflist.js";
import { sweepNetwork } from "../../src/network/sweep.js";
import { KindlingHome } from "../../src/util/home.js";
import { findBuiltKernel } from "../../src/vm/kernel-build.js";
import { REPO } from "./fixtures.js";
import { buildBusyboxTree } from "./images.js";
import { MT, OciLayoutWriter, tarDir } from "./registry.js";

export interface VmTestHome {
  tmp: string;
  home: KindlingHome;
  cleanup(): Promise<void>;
}

/** Layer 1: busybox tree (/data/hello); layer 2: /data/layer2, a changed /data/hello, 8 MiB /data/big. Named "ml". */
export async function vmTestHome(): Promise<VmTestHome> {
  // short: Firecracker's socket paths under run/<id>/vm must fit in 107 bytes
  const tmp = await mkdtemp(path.join(tmpdir(), "kvm-"));
  const home = new KindlingHome(path.join(tmp, "home")).ensure();
  const shared = path.join(REPO, ".cache", "vm-test-home", "kernel");
  await mkdir(shared, { recursive: true });
  await rm(home.kernel, { recursive: true, force: true });
  await symlink(shared, home.kernel);
  const l1 = path.join(tmp, "l1");
  await buildBusyboxTree(l1);
  const l2 = path.join(tmp, "l2");
  await mkdir(path.join(l2, "data"), { recursive: true });
  await writeFile(path.join(l2, "data/layer2"), "from layer 2\n");
  await writeFile(path.join(l2, "data/hello"), "hello from layer 2\n");
  // never read by a boot: a read of it must reach the lazy daemon (fault tests)
  await writeFile(path.join(l2, "data/big"), randomBytes(8 << 20));
  const layout = await OciLayoutWriter.create(path.join(tmp, "layout"));
  const manifest = await layout.image(
    [
      { data: await tarDir(l1), mediaType: MT.layerTar },
      { data: await tarDir(l2), mediaType: MT.layerTar },
    ],
    { config: { Cmd: ["/bin/sh"], Env: ["PATH=/bin"], WorkingDir: "/" } },
  );
  await layout.tag(manifest, "latest");
  await importImage(home, `${layout.dir}:latest`, { name: "ml" });
  await rm(l1, { recursive: true, force: true });
  await rm(l2, { recursive: true, force: true });
  const cleanup = async () => {
    // a service (and its containers' supervisors) a test or an auto-starting CLI left under this home
    await (await import("./service.js")).stopServiceAndContainers(home.root);
    await stopIdleShared(home);
    await removeHomeNetwork(home); // the home's bridge, if a run made one
    await rm(tmp, { recursive: true, force: true });
    await sweepNetwork(); // the network of a run killed in this home (quick: files only, unless one is found)
  };
  return { tmp, home, cleanup };
}

/** Kindling's built guest kernels (scripts/fixtures/guest-kernel.sh), shared by the tests that boot them. */
export const BUILT_KERNELS = path.join(REPO, ".cache", "guest-kernel", "kernel", "built");

/**
 * A VM test home whose kernel dir is its own: the built kernels (checked to match
 * guest/kernel/kindling.config), Debian's kernel from the shared cache, and initramfs files of its own.
 */
export async function builtKernelHome(): Promise<VmTestHome> {
  if ((await readdir(BUILT_KERNELS).catch(() => [])).length === 0) {
    throw new Error(
      `no built guest kernel in ${BUILT_KERNELS}: run bash scripts/fixtures.sh (guest-kernel.sh)`,
    );
  }
  const t = await vmTestHome();
  const shared = path.join(REPO, ".cache", "vm-test-home", "kernel");
  await rm(t.home.kernel, { force: true });
  await mkdir(t.home.kernel);
  await symlink(BUILT_KERNELS, path.join(t.home.kernel, "built"));
  if (!(await findBuiltKernel(t.home))) {
    await t.cleanup();
    throw new Error(`the built kernel in ${BUILT_KERNELS} does not match guest/kernel/kindling.config`);
  }
  for (const e of await readdir(shared, { withFileTypes: true })) {
    if (e.isDirectory() || e.name === "current.json")
      await symlink(path.join(shared, e.name), path.join(t.home.kernel, e.name));
  }
  return t;
}
