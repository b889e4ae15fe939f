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
  readJson(name: string): Promise<unknown>;
}

function safeRel(name: string, where: string): string {
  const n = path.posix.normalize(name);
  if (n.startsWith("../") || n === ".." || path.posix.isAbsolute(n)) {
    throw new KindlingError(`${where}: refers to ${JSON.stringify(name)} outside the archive`);
  }
  return n;
}

async function parseJson(bytes: Buffer, what: string): Promise<unknown> {
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
    readJson: async (name) => {
      const p = abs(name);
      const bytes = await readFile(p).catch(() => {
        throw new KindlingError(`${dir}: missing ${name}`);
      });
      return parseJson(bytes, `${dir}/${name}`);
    },
  };
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
    readJson: async (name) => {
      const r = memberRange(index, safeRel(name, index.file));
      const size = r.end! - r.start!;
      if (size > 64 << 20) throw new KindlingError(`${index.file}: ${name} is too large for JSON`);
      const fh = await open(r.path, "r");
      try {
        const b = Buffer.alloc(size);
        await fh.read(b, 0, size, r.start!);
        return parseJson(b, `${index.file}:${name}`);
      } finally {
        await fh.close();
      }
    },
  };
}
