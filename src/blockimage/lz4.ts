/**
 * LZ4 block decompression (the raw block format, as squashfs's lz4 compressor writes each metadata
 * block): enough for the layout reader to walk an lz4 image's tables. Hand-written (35 lines): the
 * reader needs a decoder bounded to the 8 KiB block that rejects malformed input with an error, and
 * Node has no lz4.
 */

/** Decodes one LZ4 block of at most `max` bytes; throws on a malformed or oversized block. */
export function lz4DecompressBlock(src: Buffer, max: number): Buffer {
  const out = Buffer.alloc(max);
  let i = 0;
  let o = 0;
  const bad = (why: string): never => {
    throw new Error(`lz4 block: ${why}`);
  };
  const length = (n: number) => {
    if (n !== 15) return n;
    for (;;) {
      if (i >= src.length) bad("truncated length");
      const b = src[i++]!;
      n += b;
      if (b !== 255) return n;
    }
  };
  while (i < src.length) {
    const token = src[i++]!;
    const lit = length(token >> 4);
    if (i + lit > src.length) bad("literals past the end");
    if (o + lit > max) bad(`larger than ${max} bytes`);
    src.copy(out, o, i, i + lit);
    i += lit;
    o += lit;
    if (i === src.length) break; // the last sequence has literals only
    if (i + 2 > src.length) bad("truncated offset");
    const offset = src.readUInt16LE(i);
    i += 2;
    if (offset === 0 || offset > o) bad("match before the start");
    const len = length(token & 15) + 4;
    if (o + len > max) bad(`larger than ${max} bytes`);
    // Byte by byte: a match may overlap what it produces (a run).
    for (let k = 0; k < len; k++, o++) out[o] = out[o - offset]!;
  }
  return out.subarray(0, o);
}
