/** Fresh KINDLING_HOMEs for the bench (one per unit and repetition), released without fail. */
import { mkdir, rm } from "node:fs/promises";
import path from "node:path";
import { pullImage } from "../image/registry.js";
import { cleanupStale } from "../lazy/index.js";
import { mountsUnder, unmount } from "../runtime/mounts.js";
import { errorMessage, KindlingError } from "../util/errors.js";
import { KindlingHome } from "../util/home.js";

let seq = 0;

/** A new, empty home under `parent` that has pulled `ref` (the index only: no chunk is local). */
export async function coldHome(parent: string, ref: string): Promise<KindlingHome> {
  const home = new KindlingHome(path.join(parent, `home-${seq++}`));
  await mkdir(home.root, { recursive: true });
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
  await cleanupStale(home).catch(() => {});
  for (const m of await mountsUnder(home.root)) {
    await unmount(m.mountPoint).catch((err) => {
      throw new KindlingError(`cannot release ${m.mountPoint}: ${errorMessage(err)}`);
    });
  }
  if ((await mountsUnder(home.root)).length > 0) {
    throw new KindlingError(`not removing ${home.root}: something is still mounted below it`);
  }
  await rm(home.root, { recursive: true, force: true });
}
