/**
 * Packs (issue 13): blobs pushed beside an image's chunk blobs, each the concatenation of a list of
 * its chunks, so a worker fetches many chunks with one request (a ranged GET) instead of one GET
 * per ~128 KiB chunk, which is what made a cold fetch CPU-bound (~7 ms of registry CPU and ~10 ms
 * of daemon CPU per request here). Two kinds:
 * - segments: the block image cut into runs of consecutive chunks (content-defined cuts, so two
 *   related images share the segments of their common runs); sequential readers fetch ranges of them;
 * - the startup pack: the image's startup profile's chunks in profile order, fetched whole by a
 *   cold start (one GET for what a first run reads).
 * Each chunk that arrives is still verified against its own digest before it is served or kept.
 * The chunk blobs stay the unit of dedup and of every single-chunk fetch; packs are an accelerator:
 * an image without them (older pushes, local images) fetches chunk by chunk as before.
 */
import { mkdir, rm } from "node:fs/promises";
import path from "node:path";
import { writeFileAtomic } from "../util/atomic.js";
import type { KindlingHome } from "../util/home.js";
import { readJsonFile } from "../util/jsonfile.js";
import type { BlockIndex, Digest } from "./types.js";

export const KINDLING_PACK_MEDIA_TYPE = "application/vnd.kindling.pack.v1";

/** One pack blob: `chunks` are chunk numbers of the block index, in the order they are concatenated. */
export interface PackDesc {
  digest: Digest;
  size: number;
  chunks: number[];
}

/**
 * The startup ranges: the byte ranges of the block image a first run read (merged), in first-read
 * order, concatenated into one blob; each range carries its own sha256, so each is verified as it
 * arrives and served without its whole chunks (a cold start fetches about what it reads).
 */
export interface RangePackDesc {
  digest: Digest;
  size: number;
  /** [offset in the block image, length, sha256 hex of those bytes], in pack order. */
  ranges: [number, number, string][];
}

/** The packs of one image (the pushed config's `packs`, and the pulled home's packs file). */
export interface ImagePacks {
  /** The image (block index digest) the chunk numbers refer to. */
  image: string;
  segments: PackDesc[];
  /** The profile's whole chunks (pushed when the pushing home has no recorded read ranges). */
  startup?: PackDesc;
  /** The profile's byte ranges (pushed instead of `startup` when the home recorded them). */
  startupRanges?: RangePackDesc;
}

/** At most this many startup ranges (after merging), and ranges closer than RANGE_GAP are merged. */
export const MAX_STARTUP_RANGES = 4096;
/** At most this many bytes of them: a daemon keeps them in memory (as much as its memory tier). */
export const MAX_STARTUP_RANGE_BYTES = 64 << 20;
const RANGE_GAP = 4096;

/**
 * The startup ranges to pack from a recorded run's reads ([start, end), first-read order): merged
 * where they overlap or lie within RANGE_GAP of each other, clipped to the image, ordered by when
 * their first byte was read; the earliest, up to MAX_STARTUP_RANGES ranges and MAX_STARTUP_RANGE_BYTES.
 */
export function planStartupRanges(reads: [number, number][], blockSize: number): [number, number][] {
  const spans = reads
    .map(([a, b], i) => ({ a: Math.max(0, a), b: Math.min(blockSize, b), first: i }))
    .filter((r) => Number.isFinite(r.a) && Number.isFinite(r.b) && r.b > r.a)
    .sort((x, y) => x.a - y.a);
  const merged: { a: number; b: number; first: number }[] = [];
  for (const r of spans) {
    const last = merged.at(-1);
    if (last && r.a <= last.b + RANGE_GAP) {
      last.b = Math.max(last.b, r.b);
      last.first = Math.min(last.first, r.first);
    } else merged.push({ ...r });
  }
  const out: [number, number][] = [];
  let bytes = 0;
  for (const r of merged.sort((x, y) => x.first - y.first)) {
    if (out.length >= MAX_STARTUP_RANGES || bytes + (r.b - r.a) > MAX_STARTUP_RANGE_BYTES) break;
    out.push([r.a, r.b - r.a]);
    bytes += r.b - r.a;
  }
  return out;
}

const HEX = /^[0-9a-f]{64}$/;

function checkRangePack(p: unknown, blockSize: number): RangePackDesc | string {
  const d = p as Partial<RangePackDesc> | null;
  const what = "startup ranges";
  if (!d || typeof d !== "object" || typeof d.digest !== "string" || !DIGEST.test(d.digest)) {
    return `${what}: no sha256 digest`;
  }
  if (!Array.isArray(d.ranges) || d.ranges.length === 0 || d.ranges.length > MAX_STARTUP_RANGES) {
    return `${what}: no range list, or more than ${MAX_STARTUP_RANGES}`;
  }
  let size = 0;
  const spans: [number, number][] = [];
  for (const r of d.ranges) {
    const [off, len, hex] = Array.isArray(r) ? r : [];
    if (
      !Number.isInteger(off) ||
      !Number.isInteger(len) ||
      (off as number) < 0 ||
      (len as number) <= 0 ||
      (off as number) + (len as number) > blockSize ||
      typeof hex !== "string" ||
      !HEX.test(hex)
    ) {
      return `${what}: ${JSON.stringify(r)} is not [offset, length, sha256] inside the image`;
    }
    spans.push([off as number, (off as number) + (len as number)]);
    size += len as number;
  }
  spans.sort((x, y) => x[0] - y[0]);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i][0] < spans[i - 1][1]) return `${what}: ranges overlap`;
  }
  if (d.size !== size) return `${what}: its size is not the sum of its ranges`;
  if (size > MAX_STARTUP_RANGE_BYTES) return `${what}: more than ${MAX_STARTUP_RANGE_BYTES} bytes`;
  return { digest: d.digest as Digest, size, ranges: d.ranges as [number, number, string][] };
}

/** A segment is cut after a chunk whose digest says so once it holds at least this many bytes... */
const SEGMENT_MIN = 4 << 20;
/** ...and always at this size. */
const SEGMENT_MAX = 32 << 20;
/** 1 in CUT_MOD chunks ends a segment (past SEGMENT_MIN): ~16 MiB on average with 128 KiB chunks. */
const CUT_MOD = 96;

/**
 * Segments of an index: consecutive chunk numbers. A cut falls after a chunk whose digest selects
 * it (content-defined, like the chunker one level up), so an insertion early in an image moves the
 * cuts of the segments it touches only.
 */
export function planSegments(index: BlockIndex): number[][] {
  const out: number[][] = [];
  let cur: number[] = [];
  let bytes = 0;
  index.chunks.forEach((c, i) => {
    cur.push(i);
    bytes += c.length;
    const cut = bytes >= SEGMENT_MIN && Number.parseInt(c.digest.slice(-6), 16) % CUT_MOD === 0;
    if (cut || bytes >= SEGMENT_MAX) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
  });
  if (cur.length > 0) out.push(cur);
  return out;
}

/** Bytes of a pack made of `chunks` of `index`. */
export const packSize = (index: BlockIndex, chunks: number[]) =>
  chunks.reduce((n, i) => n + index.chunks[i].length, 0);

const DIGEST = /^sha256:[0-9a-f]{64}$/;

function checkPack(p: unknown, index: BlockIndex, what: string): PackDesc | string {
  const d = p as Partial<PackDesc> | null;
  if (!d || typeof d !== "object" || typeof d.digest !== "string" || !DIGEST.test(d.digest)) {
    return `${what}: no sha256 digest`;
  }
  if (!Array.isArray(d.chunks) || d.chunks.length === 0) return `${what}: no chunk list`;
  for (const i of d.chunks) {
    if (!Number.isInteger(i) || i < 0 || i >= index.chunks.length) {
      return `${what}: ${JSON.stringify(i)} is not a chunk number of the image`;
    }
  }
  if (d.size !== packSize(index, d.chunks)) return `${what}: its size is not the sum of its chunks`;
  return { digest: d.digest as Digest, size: d.size, chunks: d.chunks };
}

/**
 * Checks packs against the image they are for: the packs, or why they are unusable (`stale`: made
 * for another image, no error; `corrupt`: deserves a warning).
 */
export function checkPacks(
  value: unknown,
  index: BlockIndex,
  digest: string,
): { packs: ImagePacks } | { stale: string } | { corrupt: string } {
  const v = value as Partial<ImagePacks> | null;
  if (!v || typeof v !== "object" || typeof v.image !== "string" || !Array.isArray(v.segments)) {
    return { corrupt: "not a packs list (wants image and segments)" };
  }
  if (v.image !== digest) return { stale: `packs are for image ${v.image}` };
  const segments: PackDesc[] = [];
  for (const [n, s] of v.segments.entries()) {
    const ok = checkPack(s, index, `segment ${n}`);
    if (typeof ok === "string") return { corrupt: ok };
    segments.push(ok);
  }
  let startup: PackDesc | undefined;
  if (v.startup !== undefined) {
    const ok = checkPack(v.startup, index, "startup pack");
    if (typeof ok === "string") return { corrupt: ok };
    startup = ok;
  }
  let startupRanges: RangePackDesc | undefined;
  if (v.startupRanges !== undefined) {
    const ok = checkRangePack(v.startupRanges, index.blockSize);
    if (typeof ok === "string") return { corrupt: ok };
    startupRanges = ok;
  }
  return {
    packs: {
      image: digest,
      segments,
      ...(startup ? { startup } : {}),
      ...(startupRanges ? { startupRanges } : {}),
    },
  };
}

/** $KINDLING_HOME/profiles/<image hex>.packs.json: a pulled image's packs (beside its profile). */
export const packsPath = (home: KindlingHome, digest: string) =>
  path.join(home.root, "profiles", `${digest.replace(/^sha256:/, "")}.packs.json`);

export async function writePacks(home: KindlingHome, packs: ImagePacks): Promise<void> {
  const file = packsPath(home, packs.image);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFileAtomic(file, `${JSON.stringify(packs)}\n`);
}

/** The home's packs file for `digest`, parsed (unchecked), or undefined if there is none. */
export function readPacksFile(home: KindlingHome, digest: string): Promise<unknown> {
  return readJsonFile(packsPath(home, digest));
}

export async function removePacks(home: KindlingHome, digest: string): Promise<void> {
  await rm(packsPath(home, digest), { force: true });
}
