import { originChunkSource } from "../registry/mirrored-chunks.js";
import type { RegistrySettings } from "../registry/settings.js";
import { ChunkStore, type StoreCounters } from "../store/chunkstore.js";
import { LocalChunkSource } from "../store/local.js";
import type { ChunkSource, ImageOrigin } from "../store/types.js";
import type { KindlingHome } from "../util/home.js";
import { ChunkFetcher, type FetchCounters } from "./fetcher.js";
import { ChunkLoader } from "./loader.js";
import type { FetchPolicy } from "./policy.js";

/**
 * Where an image's missing chunks come from: the local store for images built or imported here,
 * the registry for pulled ones. A source makes one attempt per fetch: retries are the fetcher's.
 */
export function chunkSourceFor(
  home: KindlingHome,
  origin: ImageOrigin,
  policy: FetchPolicy,
  settings?: RegistrySettings,
): ChunkSource {
  if (origin.kind === "registry") {
    // Its registry's mirrors (registries.conf) first, then the registry.
    return originChunkSource(origin, { timeoutMs: policy.attemptTimeoutMs, attempts: 1, settings });
  }
  return new LocalChunkSource(home);
}

export interface ReaderOptions {
  /** Fetches in flight at once (default 8). */
  concurrency?: number;
  log?: (msg: string) => void;
  counters?: FetchCounters & StoreCounters;
  /** Credentials and registries.conf for a pulled image; default from src/config (daemons pass theirs). */
  registry?: RegistrySettings;
}

/**
 * The one chunk path: store tier, then `source` (default: the origin's) through the fetcher, each
 * chunk verified and kept in blobs/. The lazy daemon, `image export` and `image push` read through it.
 */
export function chunkReaderFor(
  home: KindlingHome,
  origin: ImageOrigin,
  policy: FetchPolicy,
  opts: ReaderOptions & { source?: ChunkSource } = {},
): ChunkLoader {
  const source = opts.source ?? chunkSourceFor(home, origin, policy, opts.registry);
  const store = new ChunkStore(home, opts.log, opts.counters);
  return new ChunkLoader(store, new ChunkFetcher(source, policy, opts));
}
