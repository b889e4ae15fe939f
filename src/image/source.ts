import { open, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { KindlingError } from "../util/errors.js";
import { memberRange, type TarIndex } from "./archive.js";
import type { FileRange } from "./compression.js";

/** Files of an image archive, whether it is a directory or an (uncompressed) tar read in place. */
export interface ArchiveFiles {
  describe: string;
  has(name: string): Promise<boolean>;
  range(name: string): Promise<FileRange>;
  /** The whole file (JSON documents: manifests, configs, indexes), at most 64 MiB. */
  readBytes(name: string): Promise<Buffer>;
  readJson(name: string): Promise<unknown>;
}

const MAX_JSON_BYTES = 64 << 20;

function safeRel(name: string, where: string): string {
  const n = path.posix.normalize(name);
  if (n.startsWith("../") || n === ".." || path.posix.isAbsolute(n)) {
    throw new KindlingError(`${where}: refers to ${JSON.stringify(name)} outside the archive`);
  }
  return n;
}

export function parseJson(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString("utf8"));
  } catch {
    throw new KindlingError(`${what} is not valid JSON`);
  }
}

export function dirFiles(dir: string): ArchiveFiles {
  const abs = (name: string) => path.join(dir, safeRel(name, dir));
  return {
    describe: dir,
    has: (name) =>
      stat(abs(name)).then(
        () => true,
        () => false,
      ),
    range: async (name) => {
      const p = abs(name);
      await stat(p).catch(() => {
        throw new KindlingError(`${dir}: missing ${name}`);
      });
      return { path: p };
    },
    readBytes: async (name) => readDirFile(dir, name, abs(name)),
    readJson: async (name) => parseJson(await readDirFile(dir, name, abs(name)), `${dir}/${name}`),
  };
}

async function readDirFile(dir: string, name: string, p: string): Promise<Buffer> {
  const st = await stat(p).catch(() => {
    throw new KindlingError(`${dir}: missing ${name}`);
  });
  if (st.size > MAX_JSON_BYTES) throw new KindlingError(`${dir}: ${name} is too large for JSON`);
  return readFile(p);
}

export function tarFiles(index: TarIndex): ArchiveFiles {
  return {
    describe: index.file,
    has: async (name) => {
      try {
        memberRange(index, safeRel(name, index.file));
        return true;
      } catch {
        return false;
      }
    },
    range: async (name) => memberRange(index, safeRel(name, index.file)),
    readBytes: (name) => readMember(index, name),
    readJson: async (name) => parseJson(await readMember(index, name), `${index.file}:${name}`),
  };
}

async function readMember(index: TarIndex, name: string): Promise<Buffer> {
  const r = memberRange(index, safeRel(name, index.file));
  const size = r.end! - r.start!;
  if (size > MAX_JSON_BYTES) throw new KindlingError(`${index.file}: ${name} is too large for JSON`);
  const fh = await open(r.path, "r");
  try {
    const b = Buffer.alloc(size);
    await fh.read(b, 0, size, r.start!);
    return b;
  } finally {
    await fh.close();
  }
}
