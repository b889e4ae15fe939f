import { readFile } from "node:fs/promises";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { blobSize } from "./blobs.js";
import type { BlockIndex, ChunkSource, Digest } from "./types.js";

/** Chunks from the local directory store. Verifies nothing (the ChunkSource contract): callers do. */
export class LocalChunkSource implements ChunkSource {
  readonly description: string;
  constructor(private readonly home: KindlingHome) {
    this.description = `local store ${home.blobs}`;
  }

  async fetch(digest: Digest, length: number, signal?: AbortSignal): Promise<Buffer> {
    let bytes: Buffer;
    try {
      bytes = await readFile(this.home.blobPath(digest), { signal });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") {
        throw new KindlingError(`chunk ${digest} is not in the ${this.description}`);
      }
      throw err;
    }
    if (bytes.length !== length) {
      throw new KindlingError(
        `chunk ${digest} in the ${this.description} has ${bytes.length} bytes, expected ${length}`,
      );
    }
    return bytes;
  }
}

/** Bytes of the block image whose chunks are present locally (each distinct chunk counted at each use). */
export async function localBytes(home: KindlingHome, index: BlockIndex): Promise<number> {
  const present = new Map<Digest, boolean>();
  let total = 0;
  for (const c of index.chunks) {
    let has = present.get(c.digest);
    if (has === undefined) {
      has = (await blobSize(home, c.digest)) === c.length;
      present.set(c.digest, has);
    }
    if (has) total += c.length;
  }
  return total;
}
