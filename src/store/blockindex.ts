import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { putBlob, readBlob } from "./blobs.js";
import { canonicalJson } from "./canonical.js";
import { sha256 } from "./chunker.js";
import { BLOCK_INDEX_MEDIA_TYPE, type BlockIndex, type Digest } from "./types.js";

/** The canonical bytes of an index; their sha256 is the image's digest. */
export function encodeBlockIndex(index: BlockIndex): Buffer {
  return Buffer.from(canonicalJson(index));
}

/** Parses and checks an index (from the store or a registry): contiguous chunks covering the image. */
export function decodeBlockIndex(bytes: Buffer, digest: Digest | string): BlockIndex {
  let v: BlockIndex;
  try {
    v = JSON.parse(bytes.toString("utf8")) as BlockIndex;
  } catch {
    throw new KindlingError(`block index ${digest} is not JSON`);
  }
  const bad = (why: string) => new KindlingError(`block index ${digest} is invalid: ${why}`);
  if (v?.mediaType !== BLOCK_INDEX_MEDIA_TYPE) throw bad(`mediaType ${JSON.stringify(v?.mediaType)}`);
  if (v.format !== "squashfs") throw bad(`format ${JSON.stringify(v.format)}`);
  if (!Array.isArray(v.chunks)) throw bad("no chunks");
  let off = 0;
  for (const c of v.chunks) {
    if (c.offset !== off || !(c.length > 0) || !/^sha256:[0-9a-f]{64}$/.test(c.digest)) {
      throw bad(`chunk at offset ${c.offset}`);
    }
    off += c.length;
  }
  if (off !== v.blockSize) throw bad(`chunks cover ${off} bytes, blockSize is ${v.blockSize}`);
  return v;
}

export async function writeBlockIndex(home: KindlingHome, index: BlockIndex): Promise<Digest> {
  const bytes = encodeBlockIndex(index);
  return putBlob(home, bytes, sha256(bytes));
}

/** Reads (and verifies) the index blob with this digest from the local store. */
export async function readBlockIndex(home: KindlingHome, digest: Digest): Promise<BlockIndex> {
  return decodeBlockIndex(await readBlob(home, digest, "block index"), digest);
}
