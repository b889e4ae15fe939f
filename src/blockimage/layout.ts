/**
 * Where each file's data lies in a SquashFS 4.0 image, read from the image's own tables (superblock,
 * inode table and, for names, the directory table). The lazy daemon uses the extents for file-aware
 * readahead; the converter uses names and extents for a profile-ordered layout (`mksquashfs -sort`).
 * Format: https://dr-emann.github.io/squashfs/ (the kernel's fs/squashfs/squashfs_fs.h).
 */
import type { FileHandle } from "node:fs/promises";
import { inflateSync } from "node:zlib";
import { decompress as zstdDecompress } from "fzstd";
import { lz4DecompressBlock } from "./lz4.js";

/** Reads `len` bytes at `pos` of the image (fewer only at its end). */
export type ReadAt = (pos: number, len: number) => Promise<Buffer>;

/** One regular file's data in the image: its blocks, and the fragment block holding its tail. */
export interface FileExtent {
  /** Image offset of the first data block, and of the byte after the last (start === end: none). */
  start: number;
  end: number;
  /** The fragment block holding the file's tail, if any: [start, end) in the image. */
  fragment?: [number, number];
  /** The file's size in bytes (uncompressed). */
  size: number;
  /** Path inside the image ("usr/bin/python3"), when names were asked for. */
  path?: string;
}

export interface SquashfsFiles {
  /** Data block size of the image (bytes). */
  blockSize: number;
  /** Regular files in inode-table order (hard links once). */
  files: FileExtent[];
}

const MAGIC = 0x73717368;
const ABSENT = 0xffffffffffffffffn;
const META_MAX = 8192;
const NO_FRAGMENT = 0xffffffff;
const COMPRESSORS: Record<number, string> = { 1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd" };

/** Why an image's layout cannot be read (another compressor, not SquashFS 4.0, damaged tables). */
export class LayoutError extends Error {
  override name = "LayoutError";
}

interface Superblock {
  inodes: number;
  blockSize: number;
  fragments: number;
  compressor: number;
  bytesUsed: number;
  rootInode: bigint;
  inodeTable: number;
  directoryTable: number;
  fragmentTable: bigint;
}

function parseSuperblock(b: Buffer): Superblock {
  if (b.length < 96 || b.readUInt32LE(0) !== MAGIC) throw new LayoutError("not a SquashFS image");
  if (b.readUInt16LE(28) !== 4) throw new LayoutError(`SquashFS version ${b.readUInt16LE(28)}, not 4`);
  return {
    inodes: b.readUInt32LE(4),
    blockSize: b.readUInt32LE(12),
    fragments: b.readUInt32LE(16),
    compressor: b.readUInt16LE(20),
    rootInode: b.readBigUInt64LE(32),
    bytesUsed: Number(b.readBigUInt64LE(40)),
    inodeTable: Number(b.readBigUInt64LE(64)),
    directoryTable: Number(b.readBigUInt64LE(72)),
    fragmentTable: b.readBigUInt64LE(80),
  };
}

type Inflate = (data: Buffer, max: number) => Buffer;

function decompressor(id: number): Inflate {
  if (id === 6) return (d) => Buffer.from(zstdDecompress(d));
  if (id === 1) return (d, max) => inflateSync(d, { maxOutputLength: max });
  if (id === 5) {
    return (d, max) => {
      try {
        return lz4DecompressBlock(d, max);
      } catch (err) {
        throw new LayoutError((err as Error).message);
      }
    };
  }
  throw new LayoutError(`metadata compressed with ${COMPRESSORS[id] ?? `compressor ${id}`} is not supported`);
}

/**
 * A metadata area (inode or directory table) decoded block by block: `at(block, offset, len)` reads
 * across block boundaries, as inode and directory references need.
 */
class MetadataArea {
  /** Decoded blocks by their offset from the area's start; with the offset of the next block. */
  private readonly blocks = new Map<number, { data: Buffer; next: number }>();

  constructor(
    private readonly read: ReadAt,
    private readonly start: number,
    private readonly limit: number,
    private readonly inflate: Inflate,
  ) {}

  async block(off: number): Promise<{ data: Buffer; next: number }> {
    const have = this.blocks.get(off);
    if (have) return have;
    const pos = this.start + off;
    if (pos + 2 > this.limit) throw new LayoutError(`metadata block at ${pos} is past its table`);
    const head = (await this.read(pos, 2)).readUInt16LE(0);
    const size = head & 0x7fff;
    if (size === 0 || size > META_MAX || pos + 2 + size > this.limit) {
      throw new LayoutError(`metadata block at ${pos} has a bad size ${size}`);
    }
    const raw = await this.read(pos + 2, size);
    const data = head & 0x8000 ? raw : this.inflate(raw, META_MAX);
    if (data.length > META_MAX) throw new LayoutError(`metadata block at ${pos} is larger than 8 KiB`);
    const got = { data, next: off + 2 + size };
    this.blocks.set(off, got);
    return got;
  }

  /** `len` bytes starting at byte `offset` of the block at `blockOff`, continuing into the next blocks. */
  async at(blockOff: number, offset: number, len: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let got = 0;
    let b = await this.block(blockOff);
    let o = offset;
    while (got < len) {
      if (o >= b.data.length) {
        o -= b.data.length;
        b = await this.block(b.next);
        continue;
      }
      const part = b.data.subarray(o, Math.min(b.data.length, o + len - got));
      parts.push(part);
      got += part.length;
      o += part.length;
    }
    return Buffer.concat(parts, len);
  }

  /** Every block from the start to the limit, concatenated, with each block's offset in the result. */
  async all(): Promise<{ data: Buffer; starts: Map<number, number> }> {
    const parts: Buffer[] = [];
    const starts = new Map<number, number>();
    let length = 0;
    for (let off = 0; this.start + off < this.limit; ) {
      const b = await this.block(off);
      starts.set(off, length);
      parts.push(b.data);
      length += b.data.length;
      off = b.next;
    }
    return { data: Buffer.concat(parts, length), starts };
  }
}

/** A parsed inode: its type and, for regular files and directories, what we need of it. */
type Inode =
  | { kind: "file"; number: number; extent: Omit<FileExtent, "path">; fragIndex: number }
  | { kind: "dir"; number: number; block: number; offset: number; size: number }
  | { kind: "other"; number: number };

/** Parses the inode at `p` of the decoded inode table; returns it and the position after it. */
function parseInode(t: Buffer, p: number, blockSize: number): { inode: Inode; next: number } {
  if (p + 16 > t.length) throw new LayoutError("inode table ends inside an inode");
  const type = t.readUInt16LE(p);
  const number = t.readUInt32LE(p + 12);
  const q = p + 16;
  const blocks = (size: number, frag: number) =>
    frag === NO_FRAGMENT ? Math.ceil(size / blockSize) : Math.floor(size / blockSize);
  const fileOf = (start: number, size: number, frag: number, list: number) => {
    const n = blocks(size, frag);
    if (list + 4 * n > t.length) throw new LayoutError("inode table ends inside a block list");
    let end = start;
    for (let i = 0; i < n; i++) end += t.readUInt32LE(list + 4 * i) & 0xffffff;
    const inode: Inode = { kind: "file", number, extent: { start, end, size }, fragIndex: frag };
    return { inode, next: list + 4 * n };
  };
  switch (type) {
    case 1: // basic directory
      return {
        inode: {
          kind: "dir",
          number,
          block: t.readUInt32LE(q),
          size: t.readUInt16LE(q + 8),
          offset: t.readUInt16LE(q + 10),
        },
        next: q + 16,
      };
    case 2: // basic file
      return fileOf(t.readUInt32LE(q), t.readUInt32LE(q + 12), t.readUInt32LE(q + 4), q + 16);
    case 3:
    case 10: {
      // symlink: nlink, target size, target (+ xattr index when extended)
      const n = t.readUInt32LE(q + 4);
      return { inode: { kind: "other", number }, next: q + 8 + n + (type === 10 ? 4 : 0) };
    }
    case 4:
    case 5:
      return { inode: { kind: "other", number }, next: q + 8 };
    case 6:
    case 7:
      return { inode: { kind: "other", number }, next: q + 4 };
    case 8: {
      // extended directory: nlink, size, block, parent, index count, offset, xattr, index entries
      const count = t.readUInt16LE(q + 16);
      let next = q + 24;
      for (let i = 0; i < count; i++) next += 12 + t.readUInt32LE(next + 8) + 1;
      return {
        inode: {
          kind: "dir",
          number,
          block: t.readUInt32LE(q + 8),
          size: t.readUInt32LE(q + 4),
          offset: t.readUInt16LE(q + 18),
        },
        next,
      };
    }
    case 9: // extended file: start u64, size u64, sparse u64, nlink, fragment, offset, xattr
      return fileOf(
        Number(t.readBigUInt64LE(q)),
        Number(t.readBigUInt64LE(q + 8)),
        t.readUInt32LE(q + 28),
        q + 40,
      );
    case 11:
    case 12:
      return { inode: { kind: "other", number }, next: q + 12 };
    case 13:
    case 14:
      return { inode: { kind: "other", number }, next: q + 8 };
    default:
      throw new LayoutError(`unknown inode type ${type}`);
  }
}

/** Fragment blocks' [start, end) by fragment index. */
async function readFragments(read: ReadAt, sb: Superblock, inflate: Inflate): Promise<[number, number][]> {
  if (sb.fragments === 0 || sb.fragmentTable === ABSENT) return [];
  const count = Math.ceil(sb.fragments / 512);
  const lookup = await read(Number(sb.fragmentTable), 8 * count);
  const out: [number, number][] = [];
  for (let i = 0; i < count; i++) {
    const at = Number(lookup.readBigUInt64LE(8 * i));
    const area = new MetadataArea(read, at, sb.bytesUsed, inflate);
    const n = Math.min(512, sb.fragments - 512 * i);
    const entries = await area.at(0, 0, 16 * n);
    for (let k = 0; k < n; k++) {
      const start = Number(entries.readBigUInt64LE(16 * k));
      out.push([start, start + (entries.readUInt32LE(16 * k + 8) & 0xffffff)]);
    }
  }
  return out;
}

/**
 * The regular files of a SquashFS image with where their data lies; with `names`, each one's path
 * (read from the directory table). Reads only the superblock and the metadata tables.
 */
export async function readSquashfsFiles(
  read: ReadAt,
  opts: { names?: boolean } = {},
): Promise<SquashfsFiles> {
  const sb = parseSuperblock(await read(0, 96));
  const inflate = decompressor(sb.compressor);
  const inodeArea = new MetadataArea(read, sb.inodeTable, sb.directoryTable, inflate);
  const { data: table, starts } = await inodeArea.all();
  const fragments = await readFragments(read, sb, inflate);
  // Every inode by its position in the decoded table (a reference is block offset + offset).
  const byPos = new Map<number, Inode>();
  const files: FileExtent[] = [];
  const fileAt = new Map<number, FileExtent>();
  for (let p = 0; p < table.length; ) {
    const { inode, next } = parseInode(table, p, sb.blockSize);
    byPos.set(p, inode);
    if (inode.kind === "file") {
      const f: FileExtent = { ...inode.extent };
      const frag = inode.fragIndex !== NO_FRAGMENT ? fragments[inode.fragIndex] : undefined;
      if (frag) f.fragment = frag;
      files.push(f);
      fileAt.set(p, f);
    }
    p = next;
  }
  if (!opts.names) return { blockSize: sb.blockSize, files };

  const dirArea = new MetadataArea(read, sb.directoryTable, sb.bytesUsed, inflate);
  const resolve = (ref: bigint | number, offset?: number): number => {
    const block = offset === undefined ? Number(BigInt(ref) >> 16n) : Number(ref);
    const off = offset ?? Number(BigInt(ref) & 0xffffn);
    const base = starts.get(block);
    if (base === undefined) throw new LayoutError(`inode reference to block ${block} outside the table`);
    return base + off;
  };
  const walk = async (dir: Extract<Inode, { kind: "dir" }>, prefix: string, depth: number) => {
    if (depth > 256) throw new LayoutError("directories nested more than 256 deep");
    // A directory's size counts 3 bytes more than its listing.
    const size = dir.size - 3;
    if (size <= 0) return;
    const listing = await dirArea.at(dir.block, dir.offset, size);
    for (let p = 0; p < listing.length; ) {
      const count = listing.readUInt32LE(p) + 1;
      const start = listing.readUInt32LE(p + 4);
      p += 12;
      for (let i = 0; i < count; i++) {
        const offset = listing.readUInt16LE(p);
        const nameLen = listing.readUInt16LE(p + 6) + 1;
        const name = listing.subarray(p + 8, p + 8 + nameLen).toString("utf8");
        p += 8 + nameLen;
        const pos = resolve(start, offset);
        const inode = byPos.get(pos);
        const full = prefix ? `${prefix}/${name}` : name;
        if (inode?.kind === "file") {
          const f = fileAt.get(pos)!;
          f.path ??= full; // a hard link keeps its first name
        } else if (inode?.kind === "dir") await walk(inode, full, depth + 1);
      }
    }
  };
  const root = byPos.get(resolve(sb.rootInode));
  if (root?.kind !== "dir") throw new LayoutError("the root inode is not a directory");
  await walk(root, "", 0);
  return { blockSize: sb.blockSize, files };
}

/** Reads from an open image file (the converter's side). */
export function fileReader(fh: FileHandle): ReadAt {
  return async (pos, len) => {
    const b = Buffer.alloc(len);
    const { bytesRead } = await fh.read(b, 0, len, pos);
    return b.subarray(0, bytesRead);
  };
}
