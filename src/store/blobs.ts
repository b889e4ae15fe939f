import { access, readFile, stat } from "node:fs/promises";
import { writeFileAtomic } from "../util/atomic.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { sha256 } from "./chunker.js";
import type { Digest } from "./types.js";

/** The local content-addressed blob store: $KINDLING_HOME/blobs/sha256/<hex>. */

export async function hasBlob(home: KindlingHome, digest: Digest): Promise<boolean> {
  try {
    await access(home.blobPath(digest));
    return true;
  } catch {
    return false;
  }
}

/** Size of a blob if present, else null. */
export async function blobSize(home: KindlingHome, digest: Digest): Promise<number | null> {
  try {
    return (await stat(home.blobPath(digest))).size;
  } catch {
    return null;
  }
}

/**
 * Stores bytes under their digest. Atomic (temp + rename), so a concurrent writer of the same blob
 * or a crash never leaves a partial blob under a real name; identical content makes races harmless.
 */
export async function putBlob(
  home: KindlingHome,
  bytes: Buffer,
  digest: Digest = sha256(bytes),
): Promise<Digest> {
  if (await hasBlob(home, digest)) return digest;
  await writeFileAtomic(home.blobPath(digest), bytes);
  return digest;
}

/** Reads a blob and checks it is what its name says. */
export async function readBlob(home: KindlingHome, digest: Digest, what = "blob"): Promise<Buffer> {
  let bytes: Buffer;
  try {
    bytes = await readFile(home.blobPath(digest));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      throw new KindlingError(`${what} ${digest} is not in the local store (${home.blobs})`);
    }
    throw err;
  }
  if (sha256(bytes) !== digest) throw new KindlingError(`${what} ${digest} in ${home.blobs} is corrupt`);
  return bytes;
}
