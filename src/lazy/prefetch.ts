import type { ChunkCache } from "./cache.js";
import { chunksIn } from "./chunkmap.js";
import { parseSquashfsSuperblock } from "./squashfs.js";

/**
 * Fetches chunk 0 and, for a SquashFS image, every chunk holding its metadata tables, so a mount
 * and a first `ls` do not stall on one round trip per metadata block.
 */
export async function prefetchTables(cache: ChunkCache, concurrency = 4): Promise<void> {
  const p = cache.stats.prefetch;
  p.state = "running";
  try {
    const sb = Buffer.alloc(96);
    const n = await cache.read(sb, 0, 96, true, false);
    p.chunks = 1;
    p.bytes = cache.index.chunks[0]?.length ?? 0;
    const layout = parseSquashfsSuperblock(sb.subarray(0, n));
    if (!layout || layout.bytesUsed > cache.index.blockSize) {
      p.state = "skipped";
      return;
    }
    const todo = chunksIn(cache.index, layout.tablesStart, layout.bytesUsed - layout.tablesStart).filter(
      (i) => i !== 0,
    );
    let next = 0;
    const worker = async () => {
      while (next < todo.length) {
        const i = todo[next++];
        await cache.warm(i);
        p.chunks++;
        p.bytes += cache.index.chunks[i].length;
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    p.state = "done";
  } catch (err) {
    p.state = "failed";
    throw err;
  }
}
