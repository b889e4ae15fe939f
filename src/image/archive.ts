import { createReadStream } from "node:fs";
import path from "node:path";
import { KindlingError } from "../util/errors.js";
import type { FileRange } from "./compression.js";
import { tarReader } from "./tar.js";

/** Where each member of an uncompressed tar lives, so its files can be read in place (no extraction). */
export interface TarIndex {
  file: string;
  members: Map<string, { offset: number; size: number; type: string; linkname: string }>;
}

/** Normalizes a member path: no leading "./" or "/". */
export function memberKey(name: string): string {
  return path.posix.normalize(`/${name}`).slice(1).replace(/\/$/, "");
}

export async function indexTar(file: string): Promise<TarIndex> {
  const members: TarIndex["members"] = new Map();
  const tar = tarReader(createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>);
  for (;;) {
    const e = await tar.next();
    if (!e) break;
    members.set(memberKey(e.name), {
      offset: e.dataOffset,
      size: e.size,
      type: e.type,
      linkname: e.linkname,
    });
  }
  return { file, members };
}

/** The byte range of a member, following symlinks/hardlinks inside the archive (docker save uses them). */
export function memberRange(index: TarIndex, name: string): FileRange {
  let key = memberKey(name);
  for (let hops = 0; hops < 10; hops++) {
    const m = index.members.get(key);
    if (!m) break;
    if (m.type === "file") return { path: index.file, start: m.offset, end: m.offset + m.size };
    if (m.type === "symlink") key = memberKey(path.posix.join(path.posix.dirname(key), m.linkname));
    else if (m.type === "hardlink") key = memberKey(m.linkname);
    else break;
  }
  throw new KindlingError(`${index.file}: no file ${JSON.stringify(name)} in the archive`);
}
