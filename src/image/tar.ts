import { KindlingError } from "../util/errors.js";

/**
 * A streaming tar reader (ustar, GNU long names, PAX). Our own rather than node-tar's because layers
 * carry binary PAX values (security.capability in SCHILY.xattr.*) that must survive byte for byte,
 * and because every limit (name length, size) must be enforced before anything is written.
 */

export type EntryType = "file" | "hardlink" | "symlink" | "char" | "block" | "dir" | "fifo";

export interface TarEntry {
  /** The path as written in the archive (not yet cleaned). */
  name: string;
  type: EntryType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch (fractions kept from PAX). */
  mtime: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  /** Extended attributes from SCHILY.xattr.* PAX records, values as raw bytes. */
  xattrs: Map<string, Buffer>;
  /** Byte offset of the entry's data in the (decompressed) archive. */
  dataOffset: number;
}

export const LIMITS = {
  /** Longest path accepted (Linux PATH_MAX). */
  maxName: 4096,
  /** Longest path component (NAME_MAX). */
  maxComponent: 255,
  /** Largest PAX/GNU long-name record accepted. */
  maxMeta: 1 << 20,
  /** Largest single file accepted in a layer. */
  maxFileSize: 64 * 1024 ** 3,
};

const BLOCK = 512;

/** Pulls exact byte counts out of an async stream of buffers. */
class ByteReader {
  private buf: Buffer = Buffer.alloc(0);
  private ended = false;
  offset = 0;
  constructor(private readonly it: AsyncIterator<Buffer | string>) {}

  private async fill(n: number): Promise<void> {
    const parts = [this.buf];
    let have = this.buf.length;
    while (have < n && !this.ended) {
      const r = await this.it.next();
      if (r.done) {
        this.ended = true;
        break;
      }
      const b = typeof r.value === "string" ? Buffer.from(r.value) : r.value;
      parts.push(b);
      have += b.length;
    }
    if (parts.length > 1) this.buf = Buffer.concat(parts);
  }

  /** Exactly n bytes, or fewer only at the end of the stream. */
  async read(n: number): Promise<Buffer> {
    if (this.buf.length < n) await this.fill(n);
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(out.length);
    this.offset += out.length;
    return out;
  }

  /** Passes up to n bytes to sink piece by piece (no big buffers); returns how many were available. */
  async pipe(n: number, sink: (b: Buffer) => Promise<void> | void): Promise<number> {
    let left = n;
    while (left > 0) {
      if (this.buf.length === 0) {
        if (this.ended) break;
        const r = await this.it.next();
        if (r.done) {
          this.ended = true;
          break;
        }
        this.buf = typeof r.value === "string" ? Buffer.from(r.value) : r.value;
      }
      const piece = this.buf.subarray(0, Math.min(left, this.buf.length));
      this.buf = this.buf.subarray(piece.length);
      this.offset += piece.length;
      left -= piece.length;
      await sink(piece);
    }
    return n - left;
  }

  /** Reads to the end (so a decompressor upstream can finish cleanly). */
  async drain(): Promise<void> {
    this.buf = Buffer.alloc(0);
    while (!this.ended) {
      const r = await this.it.next();
      if (r.done) this.ended = true;
    }
  }
}

function cstr(b: Buffer): string {
  const z = b.indexOf(0);
  return (z === -1 ? b : b.subarray(0, z)).toString("utf8");
}

function num(b: Buffer, what: string, entry: string): number {
  if (b[0]! & 0x80) {
    // GNU base-256: big-endian, high bit of the first byte set.
    let v = 0n;
    for (let i = 0; i < b.length; i++) v = (v << 8n) | BigInt(i === 0 ? b[i]! & 0x7f : b[i]!);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new KindlingError(`tar entry ${entry}: absurd ${what}`);
    return Number(v);
  }
  const s = cstr(b).trim();
  if (s === "") return 0;
  if (!/^[0-7]+$/.test(s)) throw new KindlingError(`tar entry ${entry}: bad ${what} field "${s}"`);
  return Number.parseInt(s, 8);
}

function checksumOk(h: Buffer): boolean {
  // POSIX sums unsigned bytes; some old tars summed signed chars: accept either.
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 32 : h[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  const stored = Number.parseInt(cstr(h.subarray(148, 156)).trim() || "-1", 8);
  return stored === unsigned || stored === signed;
}

/** Parses PAX records "<len> <key>=<value>\n"; values stay bytes (xattrs may be binary). */
function parsePax(b: Buffer, entry: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let i = 0;
  while (i < b.length) {
    if (b[i] === 0) break;
    const sp = b.indexOf(0x20, i);
    const len = sp === -1 ? Number.NaN : Number.parseInt(b.subarray(i, sp).toString("latin1"), 10);
    if (!Number.isFinite(len) || len <= 0 || i + len > b.length) {
      throw new KindlingError(`tar entry ${entry}: malformed PAX header`);
    }
    const rec = b.subarray(sp + 1, i + len - 1); // without the trailing newline
    const eq = rec.indexOf(0x3d);
    if (eq === -1) throw new KindlingError(`tar entry ${entry}: malformed PAX record`);
    out.set(rec.subarray(0, eq).toString("utf8"), Buffer.from(rec.subarray(eq + 1)));
    i += len;
  }
  return out;
}

const TYPES: Record<string, EntryType> = {
  "0": "file",
  "\0": "file",
  "": "file",
  "7": "file",
  "1": "hardlink",
  "2": "symlink",
  "3": "char",
  "4": "block",
  "5": "dir",
  "6": "fifo",
};

function checkName(name: string, what: string): void {
  const bytes = Buffer.byteLength(name);
  if (bytes > LIMITS.maxName) {
    throw new KindlingError(
      `tar entry ${name.slice(0, 80)}...: ${what} is ${bytes} bytes (limit ${LIMITS.maxName})`,
    );
  }
  for (const part of name.split("/")) {
    if (Buffer.byteLength(part) > LIMITS.maxComponent) {
      throw new KindlingError(
        `tar entry ${name.slice(0, 80)}...: a ${what} component is longer than ${LIMITS.maxComponent} bytes`,
      );
    }
  }
  if (name.includes("\0")) throw new KindlingError(`tar entry ${JSON.stringify(name)}: NUL in ${what}`);
}

export interface TarReader {
  /** The next entry, or null at the end. The previous entry's data must have been read or is skipped. */
  next(): Promise<TarEntry | null>;
  /** Streams the current entry's data to sink. */
  readData(sink: (b: Buffer) => Promise<void> | void): Promise<void>;
  /** Reads the current entry's data into memory (small files only). */
  readAll(): Promise<Buffer>;
}

export function tarReader(source: AsyncIterable<Buffer | string>): TarReader {
  const r = new ByteReader(source[Symbol.asyncIterator]());
  let pending = 0; // data bytes of the current entry not yet consumed
  let padding = 0;
  let current: TarEntry | null = null;
  let done = false;
  let lastName: string | undefined; // the last entry read, to say where a bad header sits

  async function skipPending(): Promise<void> {
    const want = pending + padding;
    if (want > 0) {
      const got = await r.pipe(want, () => {});
      if (got < want && current) throw new KindlingError(`tar entry ${current.name}: archive is truncated`);
    }
    pending = 0;
    padding = 0;
  }

  async function next(): Promise<TarEntry | null> {
    if (done) return null;
    await skipPending();
    let pax = new Map<string, Buffer>();
    let longName: string | undefined;
    let longLink: string | undefined;
    for (;;) {
      const h = await r.read(BLOCK);
      if (h.length === 0 || h.every((x) => x === 0)) {
        // End of archive (two zero blocks, or a missing trailer); drain so decompressors exit.
        done = true;
        await r.drain();
        return null;
      }
      if (h.length < BLOCK) throw new KindlingError("tar archive is truncated inside a header");
      const rawName = cstr(h.subarray(0, 100));
      if (!checksumOk(h)) {
        // Described by its first bytes in hex: a binary file's bytes must never reach a terminal.
        const head = [...h.subarray(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
        throw new KindlingError(
          lastName === undefined
            ? `not a tar archive (no valid tar header; the data starts with bytes ${head})`
            : `tar header checksum mismatch after entry ${JSON.stringify(lastName)}`,
        );
      }
      const flag = String.fromCharCode(h[156]!);
      const magic = h.subarray(257, 263).toString("latin1");
      const prefix = magic.startsWith("ustar") && magic !== "ustar " ? cstr(h.subarray(345, 500)) : "";
      let name = prefix ? `${prefix}/${rawName}` : rawName;
      const size = num(h.subarray(124, 136), "size", name);
      if (flag === "x" || flag === "g" || flag === "L" || flag === "K") {
        if (size > LIMITS.maxMeta) throw new KindlingError(`tar entry ${name}: ${size}-byte metadata record`);
        const data = await r.read(size);
        if (data.length < size) throw new KindlingError(`tar entry ${name}: archive is truncated`);
        const pad = (BLOCK - (size % BLOCK)) % BLOCK;
        await r.read(pad);
        if (flag === "x") pax = new Map([...pax, ...parsePax(data, name)]);
        else if (flag === "L") longName = cstr(data);
        else if (flag === "K") longLink = cstr(data);
        // "g" (global) headers carry nothing we use.
        continue;
      }
      const paxStr = (k: string) => pax.get(k)?.toString("utf8");
      name = paxStr("path") ?? longName ?? name;
      const type = TYPES[flag];
      if (!type) throw new KindlingError(`tar entry ${name}: unsupported entry type '${flag}'`);
      const linkname = paxStr("linkpath") ?? longLink ?? cstr(h.subarray(157, 257));
      checkName(name, "path");
      if (linkname) checkName(linkname, "link target");
      const paxNum = (k: string) => {
        const v = paxStr(k);
        if (v === undefined) return undefined;
        const n = Number(v);
        if (!Number.isFinite(n) || n < 0 || n > Number.MAX_SAFE_INTEGER) {
          throw new KindlingError(`tar entry ${name}: bad PAX ${k} "${v}"`);
        }
        return n;
      };
      const entrySize = paxNum("size") ?? size;
      const xattrs = new Map<string, Buffer>();
      for (const [k, v] of pax) if (k.startsWith("SCHILY.xattr.")) xattrs.set(k.slice(13), v);
      const entry: TarEntry = {
        name,
        type,
        mode: num(h.subarray(100, 108), "mode", name) & 0o7777,
        uid: paxNum("uid") ?? num(h.subarray(108, 116), "uid", name),
        gid: paxNum("gid") ?? num(h.subarray(116, 124), "gid", name),
        size: type === "file" ? entrySize : 0,
        mtime: paxNum("mtime") ?? num(h.subarray(136, 148), "mtime", name),
        linkname,
        devmajor: type === "char" || type === "block" ? num(h.subarray(329, 337), "devmajor", name) : 0,
        devminor: type === "char" || type === "block" ? num(h.subarray(337, 345), "devminor", name) : 0,
        xattrs,
        dataOffset: r.offset,
      };
      if (entry.size > LIMITS.maxFileSize) {
        throw new KindlingError(
          `tar entry ${name}: absurd size ${entry.size} bytes (limit ${LIMITS.maxFileSize})`,
        );
      }
      // Hard links and others may still carry a size field; the data (if any) is skipped.
      pending = type === "file" ? entry.size : entrySize;
      padding = (BLOCK - (pending % BLOCK)) % BLOCK;
      current = entry;
      lastName = entry.name;
      return entry;
    }
  }

  async function readData(sink: (b: Buffer) => Promise<void> | void): Promise<void> {
    const want = pending;
    const got = await r.pipe(want, sink);
    pending = 0;
    if (got < want) throw new KindlingError(`tar entry ${current?.name}: archive is truncated`);
  }

  async function readAll(): Promise<Buffer> {
    const parts: Buffer[] = [];
    await readData((b) => void parts.push(Buffer.from(b)));
    return Buffer.concat(parts);
  }

  return { next, readData, readAll };
}
