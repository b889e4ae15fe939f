import {
  type ImagePacks,
  KINDLING_PACK_MEDIA_TYPE,
  type PackDesc,
  packSize,
  planSegments,
  type RangePackDesc,
} from "../store/packs.js";
import type { ImageRecord } from "../store/types.js";
import { BLOCK_INDEX_MEDIA_TYPE, type BlockIndex, type Digest } from "../store/types.js";
import { errorMessage, KindlingError } from "../util/errors.js";
import { progress } from "../util/progress.js";
import {
  KINDLING_ARTIFACT_TYPE,
  KINDLING_CHUNK_MEDIA_TYPE,
  KINDLING_CONFIG_MEDIA_TYPE,
  type KindlingConfig,
} from "./artifact.js";
import { RegistryChunkSource } from "./chunks.js";
import { discard, RegistryClient, RegistryError } from "./client.js";
import { resolveEndpoints } from "./endpoints.js";
import { type Descriptor, MEDIA, sha256Digest } from "./manifest.js";
import { formatReference, parseReference } from "./reference.js";
import { loadRegistriesConf } from "./registries-conf.js";
import { registrySettings } from "./settings.js";

export interface PushImage {
  record: ImageRecord;
  /** The block index blob; its sha256 is record.digest. */
  index: Buffer;
  readChunk(digest: Digest): Promise<Buffer>;
  /** Its startup profile, pushed in the config blob (see KindlingConfig). */
  startupProfile?: unknown;
  /** The profile's chunk numbers, checked: the startup pack holds them in this order. */
  startupChunks?: number[];
  /** Packs described before (the home's packs file): one with the same chunk list is not read again. */
  knownPacks?: ImagePacks;
  /**
   * The profile's byte ranges ([offset, length], pack order: store/packs.ts planStartupRanges): then
   * the startup pack holds these ranges, each with its digest, instead of the profile's whole chunks.
   */
  startupRanges?: [number, number][];
}

export interface PushOptions {
  insecure: boolean;
  signal?: AbortSignal;
  quiet?: boolean;
  /** Blobs uploaded at once; default 4. */
  concurrency?: number;
  /** Per-attempt bound on waiting for an answer; default 30 s. */
  timeoutMs?: number;
  /** Push packs (chunks/packs.ts) beside the chunks: segments and the startup pack; default true. */
  packs?: boolean;
}

/**
 * Uploads a converted image as an OCI artifact: config (RunConfig), the block index, then every
 * distinct chunk as its own blob. The chunks are listed as layers so registry garbage collection
 * keeps them, and so any worker can fetch them by digest.
 */
export async function pushKindlingImage(
  ref: string,
  opts: PushOptions,
  image: PushImage,
): Promise<{ manifestDigest: Digest; packs?: ImagePacks }> {
  const parsed = parseReference(ref);
  if (parsed.tag && parsed.digest) {
    throw new KindlingError(`push to ${ref}: give a tag or a digest, not both`);
  }
  // Pulled lazily from another repository of the same registry: its chunks may not be local, and
  // need not be: the registry can link them across repositories (a "mount").
  const origin = image.record.origin;
  const mountFrom =
    origin.kind === "registry" &&
    origin.registry === parsed.registry &&
    origin.repository !== parsed.repository
      ? origin.repository
      : undefined;
  // registries.conf may mark the registry insecure or relocate it (mirrors are for pulls only).
  const settings = registrySettings();
  const where = resolveEndpoints(
    await loadRegistriesConf(settings.registriesConf),
    parsed.registry,
    parsed.repository,
    {
      insecure: opts.insecure,
      byDigest: false,
    },
  ).at(-1)!;
  const client = new RegistryClient({
    ...parsed,
    registry: where.registry,
    repository: where.repository,
    insecure: where.insecure,
    settings,
    actions: "pull,push",
    timeoutMs: opts.timeoutMs,
    extraScopes: mountFrom ? [`repository:${mountFrom}:pull`] : [],
  });
  const indexDigest = sha256Digest(image.index);
  if (indexDigest !== image.record.digest) {
    throw new KindlingError(
      `image ${image.record.name}: its index blob hashes to ${indexDigest}, not the recorded ${image.record.digest}`,
    );
  }
  const index = parseIndex(image.index, image.record.name);

  // A lazily pulled image may lack chunks locally: those come from the registry it was pulled from.
  let originSource: RegistryChunkSource | undefined;
  const readChunk = async (digest: Digest, size: number): Promise<Buffer> => {
    try {
      return await image.readChunk(digest);
    } catch (err) {
      if (origin.kind !== "registry") throw err;
      originSource ??= new RegistryChunkSource(origin);
      return originSource.fetch(digest, size, opts.signal);
    }
  };
  // Packs: their digests go into the config, so each is read (and hashed) once before the upload,
  // and read again when it is uploaded.
  const packBytes = async (chunks: number[]): Promise<Buffer> =>
    Buffer.concat(
      await Promise.all(chunks.map((i) => readChunk(index.chunks[i].digest, index.chunks[i].length))),
    );
  const known = new Map<string, PackDesc>();
  if (image.knownPacks?.image === indexDigest) {
    for (const p of [
      ...image.knownPacks.segments,
      ...(image.knownPacks.startup ? [image.knownPacks.startup] : []),
    ]) {
      known.set(p.chunks.join(","), p);
    }
  }
  const describe = async (chunks: number[]): Promise<PackDesc> =>
    known.get(chunks.join(",")) ?? {
      digest: sha256Digest(await packBytes(chunks)),
      size: packSize(index, chunks),
      chunks,
    };
  /** Bytes [offset, offset+length) of the block image, from its chunks. */
  const rangeBytes = async (offset: number, length: number): Promise<Buffer> => {
    const parts: Buffer[] = [];
    for (const c of index.chunks) {
      if (c.offset + c.length <= offset) continue;
      if (c.offset >= offset + length) break;
      const data = await readChunk(c.digest, c.length);
      parts.push(
        data.subarray(Math.max(0, offset - c.offset), Math.min(c.length, offset + length - c.offset)),
      );
    }
    return Buffer.concat(parts);
  };
  const rangePackBytes = async (p: RangePackDesc): Promise<Buffer> =>
    Buffer.concat(await Promise.all(p.ranges.map(([off, len]) => rangeBytes(off, len))));
  let packs: ImagePacks | undefined;
  if (opts.packs !== false && index.chunks.length > 1) {
    const segments: PackDesc[] = [];
    for (const list of planSegments(index)) segments.push(await describe(list));
    let startupRanges: RangePackDesc | undefined;
    if (image.startupRanges?.length) {
      const parts = await Promise.all(image.startupRanges.map(([off, len]) => rangeBytes(off, len)));
      startupRanges = {
        digest: sha256Digest(Buffer.concat(parts)),
        size: parts.reduce((n, b) => n + b.length, 0),
        ranges: image.startupRanges.map(([off, len], i) => [off, len, sha256Digest(parts[i]).slice(7)]),
      };
    }
    const startup =
      !startupRanges && image.startupChunks?.length ? await describe(image.startupChunks) : undefined;
    packs = {
      image: indexDigest,
      segments,
      ...(startup ? { startup } : {}),
      ...(startupRanges ? { startupRanges } : {}),
    };
  }

  const config: KindlingConfig = {
    digest: indexDigest,
    blockSize: image.record.blockSize,
    runConfig: image.record.config,
    ...(image.startupProfile ? { startupProfile: image.startupProfile } : {}),
    ...(packs ? { packs } : {}),
  };
  const configBytes = Buffer.from(JSON.stringify(config));
  const configDesc: Descriptor = {
    mediaType: KINDLING_CONFIG_MEDIA_TYPE,
    digest: sha256Digest(configBytes),
    size: configBytes.length,
  };

  // Distinct chunks in first-use order (a block image repeats chunks, e.g. runs of zeros).
  const chunks = new Map<Digest, number>();
  for (const c of index.chunks) if (!chunks.has(c.digest)) chunks.set(c.digest, c.length);
  const chunkDescs: Descriptor[] = [...chunks].map(([digest, size]) => ({
    mediaType: KINDLING_CHUNK_MEDIA_TYPE,
    digest,
    size,
  }));
  // Distinct packs (a segment may repeat, e.g. runs of zeros).
  const packList = new Map<string, PackDesc>();
  for (const p of [...(packs?.segments ?? []), ...(packs?.startup ? [packs.startup] : [])]) {
    if (!packList.has(p.digest)) packList.set(p.digest, p);
  }
  const rangePack = packs?.startupRanges;
  const packDescs: Descriptor[] = [...packList.values(), ...(rangePack ? [rangePack] : [])].map((p) => ({
    mediaType: KINDLING_PACK_MEDIA_TYPE,
    digest: p.digest,
    size: p.size,
  }));
  const manifest = {
    schemaVersion: 2,
    mediaType: MEDIA.ociManifest,
    artifactType: KINDLING_ARTIFACT_TYPE,
    config: configDesc,
    layers: [
      { mediaType: BLOCK_INDEX_MEDIA_TYPE, digest: indexDigest, size: image.index.length },
      ...chunkDescs,
      ...packDescs,
    ],
    annotations: { "org.opencontainers.image.title": image.record.name },
  };

  const body = Buffer.from(JSON.stringify(manifest));
  // docker-registry (distribution 2.8) refuses manifest bodies over 4 MiB: say so before uploading.
  if (body.length > MAX_MANIFEST_BYTES) {
    throw new KindlingError(
      `image ${image.record.name} has ${chunks.size} distinct chunks: its manifest would be ${body.length} bytes, ` +
        `more than the ${MAX_MANIFEST_BYTES} registries accept; convert it with larger chunks`,
    );
  }

  const manifestDigest = sha256Digest(body);
  const target = parsed.tag ?? parsed.digest!;
  if (parsed.digest && parsed.digest !== manifestDigest) {
    throw new KindlingError(
      `push to ${ref}: the manifest's digest is ${manifestDigest}, not ${parsed.digest}`,
    );
  }

  const total =
    configBytes.length +
    image.index.length +
    [...chunks.values()].reduce((a, b) => a + b, 0) +
    packDescs.reduce((a, d) => a + d.size, 0);
  const bar = opts.quiet ? undefined : progress(`push ${formatReference(parsed)}`, total);
  let done = 0;
  let skipped = 0;
  let mounted = 0;
  const tick = (n: number) => {
    done += n;
    bar?.update(done);
  };

  const uploads: { digest: Digest; size: number; read: () => Promise<Buffer> }[] = [
    { digest: configDesc.digest as Digest, size: configBytes.length, read: async () => configBytes },
    { digest: indexDigest, size: image.index.length, read: async () => image.index },
    ...chunkDescs.map((d) => ({
      digest: d.digest as Digest,
      size: d.size,
      read: () => readChunk(d.digest as Digest, d.size),
    })),
    ...[...packList.values()].map((p) => ({
      digest: p.digest,
      size: p.size,
      read: () => packBytes(p.chunks),
    })),
    ...(rangePack
      ? [{ digest: rangePack.digest, size: rangePack.size, read: () => rangePackBytes(rangePack) }]
      : []),
  ];

  try {
    await uploadAll();
  } catch (err) {
    bar?.done("failed"); // a terminal bar left running keeps the cursor hidden
    throw err;
  }
  bar?.done(
    `${uploads.length} blobs, ${skipped} already there${mounted ? `, ${mounted} mounted from ${mountFrom}` : ""}`,
  );
  return { manifestDigest, ...(packs ? { packs } : {}) };

  async function uploadAll(): Promise<void> {
    await eachLimited(uploads, opts.concurrency ?? 4, opts.signal, async (u, signal) => {
      if (await blobExists(client, u.digest, signal)) {
        skipped++;
      } else if (mountFrom && (await mountBlob(client, u.digest, mountFrom, signal))) {
        mounted++;
      } else {
        const data = await u.read().catch((err: unknown) => {
          if (err instanceof KindlingError) throw err;
          throw new KindlingError(
            `cannot read chunk ${u.digest} of image ${image.record.name}: ${errorMessage(err)}`,
          );
        });
        if (data.length !== u.size || sha256Digest(data) !== u.digest) {
          throw new KindlingError(
            `blob ${u.digest} of image ${image.record.name} is corrupted in the local store`,
          );
        }
        await uploadBlob(client, u.digest, data, signal);
      }
      tick(u.size);
    });

    const reply = await client.request(`manifests/${target}`, {
      method: "PUT",
      headers: { "content-type": MEDIA.ociManifest },
      body,
      signal: opts.signal,
    });
    const echoed = reply.res.headers.get("docker-content-digest");
    await discard(reply);
    if (echoed && echoed !== manifestDigest) {
      throw new KindlingError(`${client.where} stored the manifest as ${echoed}, expected ${manifestDigest}`);
    }
  }
}

function parseIndex(buf: Buffer, name: string): BlockIndex {
  try {
    const index = JSON.parse(buf.toString("utf8")) as BlockIndex;
    if (Array.isArray(index.chunks)) return index;
  } catch {
    // reported below
  }
  throw new KindlingError(`image ${name}: its block index is not valid JSON with a chunks list`);
}

async function blobExists(client: RegistryClient, digest: Digest, signal?: AbortSignal): Promise<boolean> {
  const reply = await client.request(`blobs/${digest}`, { method: "HEAD", okStatus: [404], signal });
  await discard(reply);
  return reply.res.status !== 404;
}

const MAX_MANIFEST_BYTES = 4 << 20;

/**
 * Asks the registry to link a blob from another repository. True when it did (201); otherwise
 * (202: it opened an upload instead, which we cancel) the caller uploads the bytes.
 */
async function mountBlob(client: RegistryClient, digest: Digest, from: string, signal?: AbortSignal) {
  const q = new URLSearchParams({ mount: digest, from });
  const reply = await client.request(`blobs/uploads/?${q}`, { method: "POST", okStatus: [201, 202], signal });
  const location = reply.res.headers.get("location");
  await discard(reply);
  if (reply.res.status === 201) return true;
  if (location) {
    // Best effort: an abandoned session is purged by the registry anyway.
    const cancel = await client
      .request(new URL(location, `${client.base}/`).toString(), {
        method: "DELETE",
        okStatus: [404, 405],
        signal,
        attempts: 1,
      })
      .catch(() => undefined);
    if (cancel) await discard(cancel);
  }
  return false;
}

/**
 * Monolithic upload: POST opens a session, one PUT with ?digest= sends the bytes and closes it. A
 * failed PUT may leave the session unusable, so a retry starts over with a new POST.
 */
async function uploadBlob(client: RegistryClient, digest: Digest, data: Buffer, signal?: AbortSignal) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await uploadOnce(client, digest, data, signal);
    } catch (err) {
      const again =
        err instanceof RegistryError &&
        (err.transient || err.codes.includes("BLOB_UPLOAD_UNKNOWN")) &&
        attempt < 3;
      if (!again || signal?.aborted) throw err;
    }
  }
}

async function uploadOnce(client: RegistryClient, digest: Digest, data: Buffer, signal?: AbortSignal) {
  const start = await client.request("blobs/uploads/", { method: "POST", signal, okStatus: [202] });
  const location = start.res.headers.get("location");
  await discard(start);
  if (!location) throw new KindlingError(`${client.where} opened an upload for ${digest} without a Location`);
  const url = new URL(location, `${client.base}/`);
  url.searchParams.set("digest", digest);
  const put = await client.request(url.toString(), {
    method: "PUT",
    headers: { "content-type": "application/octet-stream" },
    body: data,
    signal,
    attempts: 1,
  });
  await discard(put);
}

/** Runs fn over items, at most `limit` at once; the first failure stops the rest. */
async function eachLimited<T>(
  items: T[],
  limit: number,
  outer: AbortSignal | undefined,
  fn: (item: T, signal: AbortSignal) => Promise<void>,
): Promise<void> {
  const ctl = new AbortController();
  const signal = outer ? AbortSignal.any([outer, ctl.signal]) : ctl.signal;
  let firstError: unknown;
  let next = 0;
  const worker = async () => {
    while (next < items.length && !signal.aborted) {
      const item = items[next++]!;
      try {
        await fn(item, signal);
      } catch (err) {
        firstError ??= err;
        ctl.abort();
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, () => worker()));
  if (outer?.aborted) throw outer.reason;
  if (firstError !== undefined) throw firstError;
}
