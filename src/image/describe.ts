import { readBlockIndex } from "../store/blockindex.js";
import { loadImage } from "../store/catalog.js";
import { localBytes } from "../store/local.js";
import type { KindlingHome } from "../util/home.js";

/** The fields `image inspect --json` prints (DESIGN.md: digest, blockSize, localBytes at least). */
export async function describeImage(h: KindlingHome, name: string) {
  const record = await loadImage(h, name);
  let chunkCount: number | null = null;
  let local: number | null = null;
  let chunking: unknown = null;
  let blockDigest: string | null = null;
  try {
    const index = await readBlockIndex(h, record.digest);
    chunkCount = index.chunks.length;
    local = await localBytes(h, index);
    chunking = index.chunking;
    blockDigest = index.blockDigest;
  } catch {
    // index missing (should not happen): report what the record says
  }
  return {
    name: record.name,
    digest: record.digest,
    blockSize: record.blockSize,
    blockDigest,
    localBytes: local,
    chunkCount,
    chunking,
    config: record.config,
    origin: record.origin,
    created: record.created,
  };
}
