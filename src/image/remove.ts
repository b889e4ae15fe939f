import { deleteImageRecord } from "../store/catalog.js";
import { collectGarbage } from "../store/gc.js";
import { withStoreLock } from "../store/lock.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";

/**
 * Removes an image from the catalog, then every blob (chunk or index) no remaining image references.
 * Chunks shared with other images stay.
 */
export async function removeImage(
  home: KindlingHome,
  name: string,
): Promise<{ blobs: number; bytes: number }> {
  return withStoreLock(home, async () => {
    if (!(await deleteImageRecord(home, name)))
      throw new KindlingError(`no image named ${JSON.stringify(name)}`);
    return collectGarbage(home);
  });
}
