// Chunks of a pulled Kindling image come from its registry's mirrors first (registries.conf order),
// then from the registry itself. A mirror that failed is passed over for a while.
import type { ChunkSource, Digest, ImageOrigin } from "../store/types.js";
import { debug } from "../util/debug.js";
import { errorMessage } from "../util/errors.js";
import { RegistryChunkSource, type RegistryChunkSourceOptions, type RegistryOrigin } from "./chunks.js";
import { type Endpoint, resolveEndpoints } from "./endpoints.js";
import { loadRegistriesConf } from "./registries-conf.js";
import { type RegistrySettings, registrySettings } from "./settings.js";

/** How long a failed mirror is skipped before it is tried again. */
const MIRROR_BACKOFF_MS = 30_000;

interface Route {
  endpoint: Endpoint;
  source: RegistryChunkSource;
  skipUntil: number;
}

/** The ChunkSource for an image pulled from a registry: its mirrors, then the registry. */
export function originChunkSource(
  origin: ImageOrigin,
  opts: RegistryChunkSourceOptions & { settings?: RegistrySettings } = {},
): ChunkSource {
  return new MirroredChunkSource(origin as RegistryOrigin, opts);
}

class MirroredChunkSource implements ChunkSource {
  readonly description: string;
  private routes: Promise<Route[]> | undefined;

  constructor(
    private readonly origin: RegistryOrigin,
    private readonly opts: RegistryChunkSourceOptions & { settings?: RegistrySettings },
  ) {
    this.description = `registry ${origin.registry}/${origin.repository}`;
  }

  private resolve(): Promise<Route[]> {
    this.routes ??= (async () => {
      const conf = await loadRegistriesConf((this.opts.settings ?? registrySettings()).registriesConf);
      const endpoints = resolveEndpoints(conf, this.origin.registry, this.origin.repository, {
        insecure: this.origin.insecure,
        byDigest: true,
      });
      return endpoints.map((endpoint) => ({
        endpoint,
        source: new RegistryChunkSource({ ...this.origin, ...endpoint }, this.opts),
        skipUntil: 0,
      }));
    })();
    // A bad registries.conf is reported on every fetch, not cached as a rejected promise forever.
    this.routes.catch(() => {
      this.routes = undefined;
    });
    return this.routes;
  }

  async fetch(digest: Digest, length: number, signal?: AbortSignal): Promise<Buffer> {
    const routes = await this.resolve();
    const last = routes.length - 1;
    for (const [i, route] of routes.entries()) {
      if (i < last && route.skipUntil > Date.now()) continue;
      try {
        return await route.source.fetch(digest, length, signal);
      } catch (err) {
        if (i === last || signal?.aborted) throw err;
        route.skipUntil = Date.now() + MIRROR_BACKOFF_MS;
        debug(
          `chunk ${digest} from mirror ${route.endpoint.registry} failed (${errorMessage(err)}); next source`,
        );
      }
    }
    throw new Error("unreachable: the registry itself is always the last route");
  }

  /** A range of a pack blob from the first route not being skipped (the caller falls back per chunk). */
  async openRange(
    digest: Digest,
    start: number,
    end: number,
    signal: AbortSignal,
  ): Promise<AsyncIterable<Uint8Array>> {
    const routes = await this.resolve();
    const route = routes.find((r, i) => i === routes.length - 1 || r.skipUntil <= Date.now())!;
    return route.source.openRange(digest, start, end, signal);
  }
}
