/** Fresh KINDLING_HOMEs for the bench (one per unit and repetition), released without fail. */
import { cp, mkdir, rm, stat, symlink } from "node:fs/promises";
import path from "node:path";
import { config } from "../config/index.js";
import { mountsUnder, unmount } from "../host/mounts.js";
import { pullImage } from "../image/registry.js";
import { cleanupStale, stopIdleShared } from "../lazy/index.js";
import { errorMessage, KindlingError } from "../util/errors.js";
import { KindlingHome } from "../util/home.js";
import { REPO } from "./images.js";

let seq = 0;

/**
 * The guest kernel and initramfs dir all bench homes share (VM runtimes cache them in home.kernel,
 * fetching the kernel with apt on first use: not something a cold *image* cache should pay for).
 * Seeded from the user's home, or the VM tests' cache, when one has them.
 */
export async function sharedKernelDir(parent: string): Promise<string> {
  const dir = path.join(parent, "kernel");
  let seeded = false;
  for (const from of [
    new KindlingHome(config().home).kernel,
    path.join(REPO, ".cache", "vm-test-home", "kernel"),
  ]) {
    if (seeded || !(await stat(path.join(from, "current.json")).catch(() => null))) continue;
    await cp(from, dir, { recursive: true });
    seeded = true;
  }
  if (!seeded) await mkdir(dir, { recursive: true });
  return dir;
}

/** A new, empty home under `parent` that has pulled `ref` (the index only: no chunk is local). */
export async function coldHome(parent: string, ref: string, kernelDir?: string): Promise<KindlingHome> {
  const home = new KindlingHome(path.join(parent, `home-${seq++}`));
  await mkdir(home.root, { recursive: true });
  if (kernelDir) await symlink(kernelDir, home.kernel);
  home.ensure();
  try {
    await pullImage(home, ref, { insecure: true, progress: false });
  } catch (err) {
    await releaseHome(home);
    throw err;
  }
  return home;
}

/**
 * Stops what the home's runs left (lazy daemons, image mounts), unmounts anything still below it,
 * then deletes it; never deletes through a mount.
 */
export async function releaseHome(home: KindlingHome): Promise<void> {
  await stopIdleShared(home).catch(() => {});
  await cleanupStale(home).catch(() => {});
  for (const m of await mountsUnder(home.root)) {
    await unmount(m.mountPoint).catch((err) => {
      throw new KindlingError(`cannot release ${m.mountPoint}: ${errorMessage(err)}`);
    });
  }
  if ((await mountsUnder(home.root)).length > 0) {
    throw new KindlingError(`not removing ${home.root}: something is still mounted below it`);
  }
  await rm(home.root, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
}
