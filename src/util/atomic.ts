import { randomBytes } from "node:crypto";
import { rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";

/** A unique temp path beside `dest` (same filesystem), so a rename publishes it atomically. */
export function tempPathFor(dest: string): string {
  return path.join(
    path.dirname(dest),
    `.tmp-${path.basename(dest)}-${process.pid}-${randomBytes(4).toString("hex")}`,
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
