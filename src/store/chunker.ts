import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import type { BlockIndex, ChunkRef, Digest } from "./types.js";

export type ChunkingSpec = BlockIndex["chunking"];

export function fastcdcSpec(avgSize: number): ChunkingSpec {
  return { algorithm: "fastcdc", avgSize, minSize: avgSize / 4, maxSize: avgSize * 4 };
}

/** Chosen by measurement: see docs/image-pipeline.md (bench/chunking.ts). */
export const DEFAULT_CHUNKING: ChunkingSpec = fastcdcSpec(128 * 1024);

export function sha256(b: Buffer): Digest {
  return `sha256:${createHash("sha256").update(b).digest("hex")}`;
}

/** FastCDC's gear table: 256 fixed pseudo-random 32-bit values (derived, so every build agrees). */
const GEAR = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++)
    t[i] = createHash("sha256").update(`kindling-gear-${i}`).digest().readUInt32BE(0);
  return t;
})();

/** Ones in the top `bits` bits: the gear hash mixes the newest bytes into its high bits. */
function topMask(bits: number): number {
  return bits <= 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
}

/**
 * Finds the end of the next content-defined chunk in buf[start..end) (FastCDC with normalized
 * chunking: a stricter mask before the average size, a looser one after). Returns -1 when it needs
 * more bytes and `final` is false.
 */
function fastcdcCut(buf: Buffer, start: number, end: number, spec: ChunkingSpec, final: boolean): number {
  const min = spec.minSize ?? spec.avgSize / 4;
  const max = spec.maxSize ?? spec.avgSize * 4;
  const avg = spec.avgSize;
  const len = end - start;
  if (len <= min) return final ? end : -1;
  const bits = Math.round(Math.log2(avg));
  const maskS = topMask(bits + 2);
  const maskL = topMask(bits - 2);
  const stop = Math.min(end, start + max);
  const normal = Math.min(stop, start + avg);
  let h = 0;
  let i = start + min;
  for (; i < normal; i++) {
    h = ((h << 1) + GEAR[buf[i]!]!) >>> 0;
    if ((h & maskS) === 0) return i + 1;
  }
  for (; i < stop; i++) {
    h = ((h << 1) + GEAR[buf[i]!]!) >>> 0;
    if ((h & maskL) === 0) return i + 1;
  }
  if (stop === start + max) return stop;
  return final ? end : -1;
}

/**
 * Cuts a file into chunks under `spec`, hashing each; `onChunk` gets each chunk's bytes (to store
 * it) in order. Streams: memory stays at a few times the largest chunk.
 */
export async function chunkFile(
  file: string,
  spec: ChunkingSpec,
  onChunk?: (ref: ChunkRef, bytes: Buffer) => Promise<void> | void,
): Promise<ChunkRef[]> {
  const refs: ChunkRef[] = [];
  let pending: Buffer = Buffer.alloc(0);
  let offset = 0;
  const emit = async (bytes: Buffer) => {
    const ref: ChunkRef = { offset, length: bytes.length, digest: sha256(bytes) };
    refs.push(ref);
    offset += bytes.length;
    if (onChunk) await onChunk(ref, bytes);
  };
  const cutAll = async (final: boolean) => {
    let start = 0;
    for (;;) {
      if (start >= pending.length) break;
      let cut: number;
      if (spec.algorithm === "fixed") {
        cut = start + spec.avgSize <= pending.length ? start + spec.avgSize : final ? pending.length : -1;
      } else cut = fastcdcCut(pending, start, pending.length, spec, final);
      if (cut < 0) break;
      await emit(pending.subarray(start, cut));
      start = cut;
    }
    pending = pending.subarray(start);
  };
  const stream = createReadStream(file, { highWaterMark: 4 << 20 });
  for await (const b of stream as AsyncIterable<Buffer>) {
    pending = pending.length ? Buffer.concat([pending, b]) : b;
    await cutAll(false);
  }
  await cutAll(true);
  return refs;
}
