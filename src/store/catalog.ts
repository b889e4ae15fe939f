import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { writeFileAtomic } from "../util/atomic.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import type { ImageRecord } from "./types.js";

/** The image catalog: $KINDLING_HOME/images/<encoded name>.json, one ImageRecord each. */

/**
 * A file name for an image name. Names are registry references ("host:5000/a/b:tag"), so '/' and ':'
 * (and anything else unsafe) are percent-encoded; "." and ".." cannot occur as a whole name.
 */
export function recordFileName(name: string): string {
  if (name.length === 0) throw new KindlingError("an image name must not be empty");
  const enc = encodeURIComponent(name).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
  if (enc.length > 240) throw new KindlingError(`image name is too long: ${name.slice(0, 60)}...`);
  return `${enc.startsWith(".") ? `%2E${enc.slice(1)}` : enc}.json`;
}

function recordPath(home: KindlingHome, name: string): string {
  return path.join(home.images, recordFileName(name));
}

export async function saveImage(home: KindlingHome, record: ImageRecord): Promise<void> {
  await mkdir(home.images, { recursive: true });
  await writeFileAtomic(recordPath(home, record.name), `${JSON.stringify(record, null, 2)}\n`);
}

export async function findImage(home: KindlingHome, name: string): Promise<ImageRecord | null> {
  try {
    return JSON.parse(await readFile(recordPath(home, name), "utf8")) as ImageRecord;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
}

/** The image with this name; a KindlingError naming it if there is none. */
export async function loadImage(home: KindlingHome, name: string): Promise<ImageRecord> {
  const rec = await findImage(home, name);
  if (!rec) {
    throw new KindlingError(
      `no image named ${JSON.stringify(name)} (see \`kindling image ls\`; import or pull it first)`,
    );
  }
  return rec;
}

/** All images, sorted by name. */
export async function listImages(home: KindlingHome): Promise<ImageRecord[]> {
  let files: string[];
  try {
    files = await readdir(home.images);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const out: ImageRecord[] = [];
  for (const f of files) {
    if (!f.endsWith(".json") || f.startsWith(".tmp-")) continue;
    try {
      out.push(JSON.parse(await readFile(path.join(home.images, f), "utf8")) as ImageRecord);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err; // removed meanwhile
    }
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Deletes the record; returns whether there was one. */
export async function deleteImageRecord(home: KindlingHome, name: string): Promise<boolean> {
  const p = recordPath(home, name);
  const existed = (await findImage(home, name)) !== null;
  await rm(p, { force: true });
  return existed;
}
