/** A block index made here, without the image pipeline, for tests and benchmarks. */
import { createHash } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { writeBlockIndex } from "../../src/store/blockindex.js";
import {
  BLOCK_INDEX_MEDIA_TYPE,
  type BlockIndex,
  type ChunkRef,
  type Digest,
  type ImageRecord,
} from "../../src/store/types.js";
import type { KindlingHome } from "../../src/util/home.js";

const sha = (b: Uint8Array): Digest => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/**
 * Cuts `data` into chunks (sizes cycle through `chunkSizes`, so they may vary); writes them to
 * the home's blobs unless `store` is false. The index itself is always stored.
 */
export async function indexBytes(
  home: KindlingHome,
  data: Buffer,
  chunkSizes: number | number[],
  store = true,
): Promise<{ index: BlockIndex; record: ImageRecord; chunks: Map<string, Buffer> }> {
  const chunks: ChunkRef[] = [];
  const bytes = new Map<string, Buffer>();
  await mkdir(home.blobs, { recursive: true });
  const sizes = typeof chunkSizes === "number" ? [chunkSizes] : chunkSizes;
  for (let off = 0, i = 0; off < data.length; off += sizes[i++ % sizes.length]) {
    const part = data.subarray(off, Math.min(off + sizes[i % sizes.length], data.length));
    const digest = sha(part);
    chunks.push({ offset: off, length: part.length, digest });
    bytes.set(digest, Buffer.from(part));
    if (store) await writeFile(home.blobPath(digest), part);
  }
  const index: BlockIndex = {
    mediaType: BLOCK_INDEX_MEDIA_TYPE,
    format: "squashfs",
    blockSize: data.length,
    blockDigest: sha(data),
    chunking: { algorithm: sizes.length > 1 ? "fastcdc" : "fixed", avgSize: sizes[0] },
    chunks,
  };
  // The daemon reads the index from the store by digest, as for any image.
  const digest = await writeBlockIndex(home, index);
  const record: ImageRecord = {
    name: "test",
    digest,
    blockSize: data.length,
    config: { entrypoint: [], cmd: [], env: [], workingDir: "/", user: "" },
    origin: { kind: "local" },
    created: new Date().toISOString(),
  };
  return { index, record, chunks: bytes };
}
