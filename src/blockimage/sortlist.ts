/**
 * Profile-ordered layout (issue 13): which files a startup profile read, so a rebuild with
 * `mksquashfs -sort` puts them first, together, in first-read order. The startup set then lies in
 * few contiguous chunks instead of being spread over the image.
 */
import type { BlockIndex } from "../store/types.js";
import type { FileExtent } from "./layout.js";

/** mksquashfs priorities are 16-bit; unlisted files have 0 and come after every listed one. */
const TOP = 32767;

/**
 * The paths of the files whose data (blocks or fragment block) overlaps `spans` ([start, end) of
 * the block image: what a first run read, or the chunks of its startup profile), in the order of
 * the spans (within one span, in image order). `files` needs paths (readSquashfsFiles with names).
 */
export function startupFiles(files: FileExtent[], spans: [number, number][]): string[] {
  const ranges: { start: number; end: number; path: string }[] = [];
  for (const f of files) {
    if (!f.path) continue;
    if (f.end > f.start) ranges.push({ start: f.start, end: f.end, path: f.path });
    if (f.fragment) ranges.push({ start: f.fragment[0], end: f.fragment[1], path: f.path });
  }
  ranges.sort((a, b) => a.start - b.start);
  const out: string[] = [];
  const seen = new Set<string>();
  for (const [from, to] of spans) {
    // A plain scan: fragment blocks are shared, so ranges overlap; there are a few thousand.
    for (const r of ranges) {
      if (r.start >= to) break;
      if (r.end <= from || seen.has(r.path)) continue;
      seen.add(r.path);
      out.push(r.path);
    }
  }
  return out;
}

/** The byte spans of a startup profile's chunks, in its order. */
export function chunkSpans(index: BlockIndex, chunks: number[]): [number, number][] {
  return chunks
    .filter((i) => index.chunks[i])
    .map((i) => [index.chunks[i].offset, index.chunks[i].offset + index.chunks[i].length]);
}

/**
 * The text of a mksquashfs sort file placing `paths` (relative to the source directory `root`)
 * first, in this order. Paths mksquashfs's sort file cannot carry (whitespace, control
 * characters) are left out: they keep their default place.
 */
export function sortFileText(root: string, paths: string[]): string {
  const lines: string[] = [];
  for (const [rank, p] of paths.filter((p) => !/[\s\p{Cc}]/u.test(p)).entries()) {
    lines.push(`${root.replace(/\/+$/, "")}/${p} ${Math.max(1, TOP - rank)}`);
  }
  return lines.length ? `${lines.join("\n")}\n` : "";
}
