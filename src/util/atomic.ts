import { randomBytes } from "node:crypto";
import { rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";

/** Unique per process (random once: a reused pid must not meet an old file's name) and per call. */
const tag = randomBytes(4).toString("hex");
let seq = 0;

/**
 * A unique temp path beside `dest` (same filesystem), so a rename publishes it atomically. The
 * `-<pid>-` part lets a later cleanup find a dead process's leftovers. No random bytes per call:
 * the lazy daemon names one per chunk it stores.
 */
export function tempPathFor(dest: string): string {
  return path.join(
    path.dirname(dest),
    `.tmp-${path.basename(dest)}-${process.pid}-${tag}${(seq++).toString(36)}`,
  );
}

/** Writes a file so readers see either the old content or the whole new one, never a part. */
export async function writeFileAtomic(dest: string, data: string | Buffer, mode?: number): Promise<void> {
  const tmp = tempPathFor(dest);
  try {
    await writeFile(tmp, data, mode === undefined ? undefined : { mode });
    await rename(tmp, dest);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
