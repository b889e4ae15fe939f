import { mkdtemp, rm } from "node:fs/promises";
import path from "node:path";
import type { ImageOrigin, RunConfig } from "../store/types.js";
import { BLOCK_INDEX_MEDIA_TYPE, type Digest } from "../store/types.js";
import { debug } from "../util/debug.js";
import { errorMessage, KindlingError } from "../util/errors.js";
import { progress } from "../util/progress.js";
import { isKindlingManifest, parseKindlingConfig } from "./artifact.js";
import { downloadBlob, fetchBlobVerified } from "./blob.js";
import { RegistryClient } from "./client.js";
import { type Endpoint, resolveEndpoints } from "./endpoints.js";
import { fetchImageManifest, type ImageManifest } from "./manifest.js";
import { formatPlatform, type Platform, platformMatches } from "./platform.js";
import { formatReference, manifestReference, parseReference } from "./reference.js";
import { loadRegistriesConf } from "./registries-conf.js";
import { type RegistrySettings, registrySettings } from "./settings.js";

export interface PulledLayer {
  /** The blob as stored in the registry (gzip, zstd or plain tar; tell them apart by magic bytes). */
  path: string;
  digest: Digest;
  mediaType: string;
  size: number;
}

export type PullResult =
  | {
      kind: "image";
      /** Normalized "registry/repository:tag[@digest]". */
      reference: string;
      /** sha256 of the image manifest (after picking linux/amd64 from an index). */
      manifestDigest: Digest;
      configJson: unknown;
      layers: PulledLayer[];
      /** Removes the downloaded layers. */
      dispose(): Promise<void>;
    }
  | {
      kind: "kindling";
      reference: string;
      manifestDigest: Digest;
      /** The block index blob, verified against indexDigest. */
      index: Buffer;
      indexDigest: Digest;
      runConfig: RunConfig;
      origin: ImageOrigin;
      /** The config's startup profile, unchecked (see KindlingConfig). */
      startupProfile?: unknown;
      /** The config's packs, unchecked (see KindlingConfig). */
      packs?: unknown;
    };

export interface PullOptions {
  /** Plain HTTP instead of HTTPS. */
  insecure: boolean;
  /** Layers are downloaded into a fresh directory below this one. */
  tmpDir: string;
  signal?: AbortSignal;
  /** No progress output. */
  quiet?: boolean;
  /** Layers downloaded at once; default 3. */
  concurrency?: number;
  /** Per-attempt bound on waiting for headers and on a stalled body; default 30 s / 60 s. */
  timeoutMs?: number;
  /** The image picked from an index; default the host's platform. */
  platform?: Platform;
  /** Credentials and registries.conf; default from the environment. */
  settings?: RegistrySettings;
}

/**
 * Pulls `ref`. A container image: its config and layers, verbatim and verified, into tmpDir. A
 * Kindling artifact (see push.ts): only its config and block index; chunks are fetched lazily later.
 */
export async function pullFromRegistry(ref: string, opts: PullOptions): Promise<PullResult> {
  const parsed = parseReference(ref);
  const reference = formatReference(parsed);
  const settings = opts.settings ?? registrySettings();
  const conf = await loadRegistriesConf(settings.registriesConf);
  const endpoints = resolveEndpoints(conf, parsed.registry, parsed.repository, {
    insecure: opts.insecure,
    byDigest: parsed.digest !== undefined,
  });
  const {
    client,
    manifest,
    digest: manifestDigest,
    fromIndex,
  } = await firstAnswering(
    endpoints,
    async (ep) => {
      const client = new RegistryClient({
        ...ep,
        settings,
        timeoutMs: opts.timeoutMs,
        idleTimeoutMs: opts.timeoutMs,
      });
      const got = await fetchImageManifest(client, manifestReference(parsed), opts.signal, opts.platform);
      return { client, ...got };
    },
    opts.signal,
  );

  if (isKindlingManifest(manifest)) {
    const where = `${parsed.registry}/${parsed.repository}`;
    const indexDesc = manifest.layers[0];
    if (!indexDesc || indexDesc.mediaType !== BLOCK_INDEX_MEDIA_TYPE) {
      throw new KindlingError(
        `${reference}: Kindling artifact's first layer is not a ${BLOCK_INDEX_MEDIA_TYPE}`,
      );
    }
    const indexDigest = indexDesc.digest as Digest;
    // Config and index at once (one round trip less on a cold start's pull); both verified.
    const indexBlob = fetchBlobVerified(client, indexDigest, indexDesc.size, opts.signal);
    indexBlob.catch(() => {}); // awaited below; a config error is reported first
    const cfg = parseKindlingConfig(
      await fetchBlobVerified(client, manifest.config.digest as Digest, manifest.config.size, opts.signal),
      where,
    );
    if (cfg.digest !== indexDigest) {
      throw new KindlingError(
        `${reference}: config names image ${cfg.digest} but the index blob is ${indexDigest}`,
      );
    }
    const index = await indexBlob;
    return {
      kind: "kindling",
      reference,
      manifestDigest,
      index,
      indexDigest,
      runConfig: cfg.runConfig,
      startupProfile: cfg.startupProfile,
      packs: cfg.packs,
      origin: {
        kind: "registry",
        registry: parsed.registry,
        repository: parsed.repository,
        reference: manifestReference(parsed),
        // The registry's own setting: chunk fetches resolve mirrors again from registries.conf.
        insecure: endpoints.at(-1)!.insecure,
      },
    };
  }

  const configJson = await fetchConfig(client, manifest, reference, opts.signal);
  if (opts.platform && !fromIndex) checkConfigPlatform(configJson, opts.platform, reference);
  const dir = await mkdtemp(path.join(opts.tmpDir, "pull-"));
  const dispose = () => rm(dir, { recursive: true, force: true });
  try {
    const layers = await downloadLayers(client, manifest, dir, reference, opts);
    return { kind: "image", reference, manifestDigest, configJson, layers, dispose };
  } catch (err) {
    await dispose();
    throw err;
  }
}

/**
 * Tries each endpoint (mirrors, then the registry) until one serves the manifest. If none does,
 * the registry's own error is thrown, with what the mirrors said.
 */
async function firstAnswering<T>(
  endpoints: Endpoint[],
  attempt: (ep: Endpoint) => Promise<T>,
  signal?: AbortSignal,
): Promise<T> {
  const failures: string[] = [];
  for (const [i, ep] of endpoints.entries()) {
    try {
      const got = await attempt(ep);
      if (ep.mirror) debug(`pulling from mirror ${ep.registry}/${ep.repository}`);
      return got;
    } catch (err) {
      if (i === endpoints.length - 1 || signal?.aborted) {
        if (failures.length === 0 || !(err instanceof KindlingError)) throw err;
        throw new KindlingError(`${err.message} (mirrors tried first: ${failures.join("; ")})`, err.code);
      }
      const why = errorMessage(err);
      debug(`mirror ${ep.registry}/${ep.repository} failed: ${why}`);
      failures.push(`${ep.registry}: ${why}`);
    }
  }
  throw new KindlingError("no endpoint to pull from");
}

/** A single-platform image asked for with --platform must be that platform (an index was picked from already). */
function checkConfigPlatform(configJson: unknown, want: Platform, reference: string): void {
  const c = configJson as { os?: unknown; architecture?: unknown; variant?: unknown } | null;
  if (!c || typeof c.os !== "string" || typeof c.architecture !== "string") return;
  const have = {
    os: c.os,
    architecture: c.architecture,
    variant: typeof c.variant === "string" ? c.variant : undefined,
  };
  // Configs often leave the variant out: then os/arch decide.
  if (!platformMatches(have, have.variant ? want : { ...want, variant: undefined })) {
    throw new KindlingError(
      `${reference} is a single ${formatPlatform(have)} image, not ${formatPlatform(want)} (it offers: ${formatPlatform(have)})`,
    );
  }
}

async function fetchConfig(
  client: RegistryClient,
  manifest: ImageManifest,
  reference: string,
  signal?: AbortSignal,
): Promise<unknown> {
  const buf = await fetchBlobVerified(client, manifest.config.digest as Digest, manifest.config.size, signal);
  try {
    return JSON.parse(buf.toString("utf8"));
  } catch {
    throw new KindlingError(`${reference}: image config ${manifest.config.digest} is not JSON`);
  }
}

async function downloadLayers(
  client: RegistryClient,
  manifest: ImageManifest,
  dir: string,
  reference: string,
  opts: PullOptions,
): Promise<PulledLayer[]> {
  for (const l of manifest.layers) {
    // Foreign (Windows) layers live elsewhere and never hold linux content.
    if (l.mediaType.includes("nondistributable") || l.mediaType.includes("foreign")) {
      throw new KindlingError(`${reference}: layer ${l.digest} is non-distributable (${l.mediaType})`);
    }
  }
  const total = manifest.layers.reduce((n, l) => n + l.size, 0);
  const received = new Map<string, number>();
  let sum = 0;
  const bar = opts.quiet ? undefined : progress(`pull ${reference}`, total);
  const layers: PulledLayer[] = manifest.layers.map((l, i) => ({
    // The index keeps two identical layers apart; the digest names the content.
    path: path.join(dir, `${String(i).padStart(3, "0")}-${l.digest.slice(7)}`),
    digest: l.digest as Digest,
    mediaType: l.mediaType,
    size: l.size,
  }));
  // The first failure stops the other downloads instead of letting them run to the end.
  const ctl = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, ctl.signal]) : ctl.signal;
  let firstError: unknown;
  let next = 0;
  const worker = async () => {
    while (next < layers.length && !signal.aborted) {
      const layer = layers[next++]!;
      try {
        await downloadBlob(client, layer.digest, layer.size, layer.path, {
          signal,
          onBytes: (n) => {
            sum += n - (received.get(layer.path) ?? 0);
            received.set(layer.path, n);
            bar?.update(sum);
          },
        });
      } catch (err) {
        firstError ??= err;
        ctl.abort();
        throw err;
      }
    }
  };
  const n = Math.max(1, Math.min(opts.concurrency ?? 3, layers.length));
  await Promise.allSettled(Array.from({ length: n }, () => worker()));
  // Always finish the bar: a terminal bar left running keeps the cursor hidden.
  const failed = opts.signal?.aborted || firstError !== undefined;
  bar?.done(failed ? "failed" : `${layers.length} layers`);
  if (opts.signal?.aborted) throw opts.signal.reason;
  if (firstError !== undefined) throw firstError;
  return layers;
}
