import { readdir, rm, stat } from "node:fs/promises";
import path from "node:path";
import type { KindlingHome } from "../util/home.js";
import { readBlob } from "./blobs.js";
import { decodeBlockIndex } from "./blockindex.js";
import { readCatalog } from "./catalog.js";
import type { Digest } from "./types.js";

const STALE_TEMP_MS = 3600_000;

/**
 * Deletes blobs no image references: an image keeps its index blob and every chunk the index names.
 * Must run under the store lock (withStoreLock), like image commits. Returns what it freed.
 */
export async function collectGarbage(home: KindlingHome): Promise<{ blobs: number; bytes: number }> {
  const live = new Set<string>();
  const catalog = await readCatalog(home);
  // A damaged record whose digest is still legible keeps its blobs: it may be repaired by a re-pull.
  const kept = [...catalog.images, ...catalog.damaged.filter((d) => d.digest !== undefined)];
  for (const rec of kept as { digest: Digest }[]) {
    live.add(rec.digest.slice(7));
    let bytes: Buffer;
    try {
      bytes = await readBlob(home, rec.digest, "block index");
    } catch {
      continue; // a lazily pulled image whose index went missing: nothing more to keep
    }
    for (const c of decodeBlockIndex(bytes, rec.digest).chunks) live.add(c.digest.slice(7));
  }
  let blobs = 0;
  let freed = 0;
  for (const d of await readdir(home.blobs, { withFileTypes: true })) {
    const p = path.join(home.blobs, d.name);
    if (d.name.startsWith(".tmp-")) {
      // A temp file a crashed writer left (live writers rename theirs within seconds).
      const st = await stat(p).catch(() => null);
      if (st && Date.now() - st.mtimeMs > STALE_TEMP_MS) await rm(p, { force: true });
      continue;
    }
    if (!/^[0-9a-f]{64}$/.test(d.name) || live.has(d.name)) continue;
    const size = await stat(p).then(
      (s) => s.size,
      () => 0,
    );
    await rm(p, { force: true });
    blobs++;
    freed += size;
  }
  return { blobs, bytes: freed };
}
