import { mkdir, readdir, readFile, rm, stat } from "node:fs/promises";
import path from "node:path";
import { writeFileAtomic } from "../util/atomic.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { checkImageName } from "./names.js";
import type { Digest, ImageRecord } from "./types.js";

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
  checkImageName(record.name);
  await mkdir(home.images, { recursive: true });
  await writeFileAtomic(recordPath(home, record.name), `${JSON.stringify(record, null, 2)}\n`);
}

/** A catalog file that could not be read as an image record (truncated by a full disk, edited, ...). */
export interface DamagedRecord {
  /** The image name the file name encodes: `kindling image rm NAME` removes the record. */
  name: string;
  file: string;
  problem: string;
  /** The block index digest, when it could still be read from the damaged text (gc keeps its blobs). */
  digest?: Digest;
}

/** Thrown by findImage/loadImage for a damaged record: one line, and how to get rid of it. */
export class DamagedRecordError extends KindlingError {
  constructor(readonly damaged: DamagedRecord) {
    super(
      `the catalog record of image ${JSON.stringify(damaged.name)} (${damaged.file}) is damaged: ${damaged.problem}; \`kindling image rm ${damaged.name}\` removes it`,
      "EDAMAGED",
    );
  }
}

/** The image name a record file name encodes (recordFileName's inverse). */
export function nameOfRecordFile(file: string): string {
  try {
    return decodeURIComponent(file.replace(/\.json$/, ""));
  } catch {
    return file;
  }
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

/** Parses a record file; a DamagedRecordError says what is wrong with it. */
function parseRecord(text: string, file: string): ImageRecord {
  const damaged = (problem: string) => {
    const digest = /"digest"\s*:\s*"(sha256:[0-9a-f]{64})"/.exec(text)?.[1] as Digest | undefined;
    return new DamagedRecordError({ name: nameOfRecordFile(path.basename(file)), file, problem, digest });
  };
  let rec: Partial<ImageRecord>;
  try {
    rec = JSON.parse(text) as Partial<ImageRecord>;
  } catch {
    throw damaged(text.length === 0 ? "empty" : "not valid JSON (truncated?)");
  }
  if (!rec || typeof rec !== "object") throw damaged("not a JSON object");
  if (typeof rec.name !== "string") throw damaged("no name");
  if (typeof rec.digest !== "string" || !DIGEST_RE.test(rec.digest)) throw damaged("no valid digest");
  if (typeof rec.blockSize !== "number") throw damaged("no blockSize");
  if (!rec.config || typeof rec.config !== "object") throw damaged("no config");
  if (!rec.origin || typeof rec.origin !== "object") throw damaged("no origin");
  return rec as ImageRecord;
}

/** The record of `name`, null if there is none; a DamagedRecordError if its file is damaged. */
export async function findImage(home: KindlingHome, name: string): Promise<ImageRecord | null> {
  const file = recordPath(home, name);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
  return parseRecord(text, file);
}

/** The image with this name; a KindlingError naming it if there is none. */
export async function loadImage(home: KindlingHome, name: string): Promise<ImageRecord> {
  checkImageName(name);
  const rec = await findImage(home, name);
  if (!rec) {
    throw new KindlingError(
      `no image named ${JSON.stringify(name)} (see \`kindling image ls\`; import or pull it first)`,
    );
  }
  return rec;
}

/** Every record, sorted by name, and the damaged ones beside them (skipped, not fatal). */
export async function readCatalog(
  home: KindlingHome,
): Promise<{ images: ImageRecord[]; damaged: DamagedRecord[] }> {
  let files: string[];
  try {
    files = await readdir(home.images);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { images: [], damaged: [] };
    throw err;
  }
  const images: ImageRecord[] = [];
  const damaged: DamagedRecord[] = [];
  for (const f of files) {
    if (!f.endsWith(".json") || f.startsWith(".tmp-")) continue;
    const file = path.join(home.images, f);
    try {
      images.push(parseRecord(await readFile(file, "utf8"), file));
    } catch (err) {
      if (err instanceof DamagedRecordError) damaged.push(err.damaged);
      else if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err; // ENOENT: removed meanwhile
    }
  }
  images.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { images, damaged };
}

/** All readable images, sorted by name (readCatalog also reports the damaged records). */
export async function listImages(home: KindlingHome): Promise<ImageRecord[]> {
  return (await readCatalog(home)).images;
}

/** Deletes the record; returns whether there was one. */
export async function deleteImageRecord(home: KindlingHome, name: string): Promise<boolean> {
  const p = recordPath(home, name);
  const existed = await stat(p).then(
    () => true,
    () => false,
  );
  await rm(p, { force: true });
  return existed;
}
