import type { BlockIndex, ChunkRef } from "../store/types.js";

/** Index of the chunk holding byte `offset` (binary search: chunks may have any size). */
export function chunkAt(index: BlockIndex, offset: number): number {
  const chunks = index.chunks;
  let lo = 0;
  let hi = chunks.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const c = chunks[mid];
    if (offset < c.offset) hi = mid - 1;
    else if (offset >= c.offset + c.length) lo = mid + 1;
    else return mid;
  }
  return -1;
}

/** The chunks overlapping [offset, offset+length), clipped to the image. */
export function chunksIn(index: BlockIndex, offset: number, length: number): number[] {
  const end = Math.min(offset + length, index.blockSize);
  if (offset >= end) return [];
  const first = chunkAt(index, offset);
  if (first < 0) return [];
  const out: number[] = [];
  for (let i = first; i < index.chunks.length && index.chunks[i].offset < end; i++) out.push(i);
  return out;
}

/** Checks the invariants readers depend on: contiguous chunks covering [0, blockSize). */
export function validateIndex(index: BlockIndex): void {
  let pos = 0;
  for (const c of index.chunks as ChunkRef[]) {
    if (c.offset !== pos || c.length <= 0 || !/^sha256:[0-9a-f]{64}$/.test(c.digest)) {
      throw new Error(`block index chunk at ${c.offset} is not contiguous or malformed`);
    }
    pos += c.length;
  }
  if (pos !== index.blockSize) throw new Error(`block index covers ${pos} bytes, not ${index.blockSize}`);
}
