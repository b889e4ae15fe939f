import { liveDaemonPids, stopIdleShared } from "../lazy/index.js";
import { removeProfile } from "../lazy/profile.js";
import { DamagedRecordError, deleteImageRecord, findImage, listImages } from "../store/catalog.js";
import { collectGarbage } from "../store/gc.js";
import { withStoreLock } from "../store/lock.js";
import { removePacks } from "../store/packs.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";

/**
 * Removes an image from the catalog, then every blob (chunk or index) no remaining image references.
 * Chunks shared with other images stay. When no other name keeps its digest, the image's idle lazy
 * daemons are stopped first, and an image still served to a container or an `image mount` is
 * refused rather than having its chunks deleted under the reader. A damaged catalog record (see
 * `image ls`) is removed the same way.
 */
export async function removeImage(
  home: KindlingHome,
  name: string,
): Promise<{ blobs: number; bytes: number }> {
  return withStoreLock(home, async () => {
    // A damaged record is removed too (its digest, if still legible, is treated as the image's).
    const record = await findImage(home, name).catch((err: unknown) => {
      if (err instanceof DamagedRecordError) return { digest: err.damaged.digest };
      throw err;
    });
    if (!record) throw new KindlingError(`no image named ${JSON.stringify(name)}`);
    const digest = record.digest;
    const keptByOther = (await listImages(home)).some((r) => r.name !== name && r.digest === digest);
    if (digest && !keptByOther) {
      await stopIdleShared(home, digest);
      const busy = await liveDaemonPids(home, digest);
      if (busy.length > 0) {
        throw new KindlingError(
          `image ${name} is in use (lazy daemon pid ${busy.join(", ")} serves it to a running container or an \`image mount\`): stop those or \`kindling image umount\` first`,
        );
      }
    }
    await deleteImageRecord(home, name);
    // Its startup profile goes with the last name of the image (a re-pull brings the pushed one).
    if (digest && !keptByOther) {
      await removeProfile(home, digest);
      await removePacks(home, digest);
    }
    return collectGarbage(home);
  });
}
