import type { ImageOrigin } from "../image/types.js";
import { RegistryChunkSource } from "../registry/chunks.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { putBlob } from "./blobs.js";
import { sha256 } from "./chunker.js";
import { LocalChunkSource } from "./local.js";
import type { ChunkSource, Digest } from "./types.js";

/**
 * Local chunks first; for an image pulled lazily, missing chunks come from its registry, are
 * verified, and are kept in the local store (so the next read is local).
 */
export class CachingChunkSource implements ChunkSource {
  readonly description: string;
  private readonly local: LocalChunkSource;
  constructor(
    private readonly home: KindlingHome,
    private readonly remote: ChunkSource,
  ) {
    this.local = new LocalChunkSource(home);
    this.description = `${this.local.description}, then ${remote.description}`;
  }

  async fetch(digest: Digest, length: number, signal?: AbortSignal): Promise<Buffer> {
    try {
      return await this.local.fetch(digest, length, signal);
    } catch {
      const bytes = await this.remote.fetch(digest, length, signal);
      if (sha256(bytes) !== digest || bytes.length !== length) {
        throw new KindlingError(`chunk ${digest} from ${this.remote.description} is corrupt`);
      }
      await putBlob(this.home, bytes, digest);
      return bytes;
    }
  }
}

/** Where an image's chunks are read from when the whole image is needed (export, push). */
export function chunkSourceFor(home: KindlingHome, origin: ImageOrigin): ChunkSource {
  if (origin.kind === "registry") return new CachingChunkSource(home, new RegistryChunkSource(origin));
  return new LocalChunkSource(home);
}
