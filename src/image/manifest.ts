import { createHash } from "node:crypto";
import { KindlingError } from "../util/errors.js";
import { detectCompression, type FileRange, readHead } from "./compression.js";
import { type ArchiveFiles, parseJson } from "./source.js";

/** What an archive resolves to: the image config and its layers, bottom first. */
export interface ResolvedImage {
  configJson: unknown;
  layers: FileRange[];
}

const INDEX_TYPES = new Set([
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
]);
const REF_NAME = "org.opencontainers.image.ref.name";

interface Descriptor {
  mediaType?: string;
  digest: string;
  size?: number;
  annotations?: Record<string, string>;
  platform?: { os?: string; architecture?: string; variant?: string };
}

function blobName(d: Descriptor, where: string): string {
  const m = /^(sha256|sha512):([0-9a-f]+)$/.exec(d?.digest ?? "");
  if (!m) throw new KindlingError(`${where}: bad digest ${JSON.stringify(d?.digest)}`);
  return `blobs/${m[1]}/${m[2]}`;
}

/**
 * A JSON blob an image names by digest (index, manifest, config), read and checked against that
 * digest (and size) before it is trusted: a layout whose documents were edited is refused, naming
 * the blob.
 */
async function readVerifiedJson(files: ArchiveFiles, d: Descriptor, what: string): Promise<unknown> {
  const where = files.describe;
  const name = blobName(d, where);
  const bytes = await files.readBytes(name);
  checkDigest(bytes, d.digest, `${where}: ${what} ${name}`);
  if (typeof d.size === "number" && d.size !== bytes.length) {
    throw new KindlingError(
      `${where}: ${what} ${name} is ${bytes.length} bytes, its descriptor says ${d.size}`,
    );
  }
  return parseJson(bytes, `${where}: ${what} ${name}`);
}

/** Throws naming `what` unless `bytes` hash to `digest` ("sha256:<hex>" or "sha512:<hex>"). */
function checkDigest(bytes: Buffer, digest: string, what: string): void {
  const [alg, hex] = digest.split(":") as [string, string];
  const got = createHash(alg).update(bytes).digest("hex");
  if (got !== hex) {
    throw new KindlingError(
      `${what} does not match its digest ${digest} (content has ${alg}:${got}): modified or corrupt`,
    );
  }
}

/** linux/amd64 among platform-specific manifests (the only platform Kindling runs). */
function pickPlatform(ds: Descriptor[], where: string): Descriptor {
  const amd64 = ds.filter(
    (d) => (d.platform?.os ?? "linux") === "linux" && d.platform?.architecture === "amd64",
  );
  if (amd64.length > 0) return amd64[0]!;
  const unspecified = ds.filter((d) => !d.platform);
  if (unspecified.length === 1) return unspecified[0]!;
  const have = ds.map((d) => `${d.platform?.os}/${d.platform?.architecture}`).join(", ");
  throw new KindlingError(`${where}: no linux/amd64 image (has ${have || "nothing"})`);
}

function pickTag(ds: Descriptor[], tag: string | undefined, where: string): Descriptor {
  const name = (d: Descriptor) => d.annotations?.[REF_NAME];
  if (tag !== undefined) {
    const hit = ds.find((d) => name(d) === tag) ?? ds.find((d) => name(d)?.endsWith(`:${tag}`));
    if (!hit) {
      const tags = ds.map(name).filter(Boolean).join(", ");
      throw new KindlingError(`${where}: no image tagged ${JSON.stringify(tag)} (tags: ${tags || "none"})`);
    }
    return hit;
  }
  if (ds.length === 1) return ds[0]!;
  const latest = ds.find((d) => name(d) === "latest");
  if (latest) return latest;
  if (ds.every((d) => d.platform)) return pickPlatform(ds, where);
  const tags = ds.map(name).filter(Boolean).join(", ");
  throw new KindlingError(
    `${where}: holds several images; name one as <path>:<tag> (tags: ${tags || "none"})`,
  );
}

/** Resolves an OCI image layout (index.json; nested indexes followed; linux/amd64 picked). */
export async function resolveOciLayout(files: ArchiveFiles, tag?: string): Promise<ResolvedImage> {
  const where = files.describe;
  const top = (await files.readJson("index.json")) as { manifests?: Descriptor[] };
  if (!Array.isArray(top?.manifests)) throw new KindlingError(`${where}: index.json has no manifests`);
  let desc = pickTag(top.manifests, tag, where);
  for (let depth = 0; ; depth++) {
    if (depth > 8) throw new KindlingError(`${where}: image indexes nested too deeply`);
    const doc = (await readVerifiedJson(files, desc, depth === 0 ? "manifest" : "nested manifest")) as {
      mediaType?: string;
      manifests?: Descriptor[];
      config?: Descriptor;
      layers?: Descriptor[];
    };
    const isIndex =
      INDEX_TYPES.has(desc.mediaType ?? "") ||
      INDEX_TYPES.has(doc.mediaType ?? "") ||
      Array.isArray(doc.manifests);
    if (isIndex) {
      desc = pickPlatform(doc.manifests ?? [], `${where} (index ${desc.digest})`);
      continue;
    }
    if (!doc.config || !Array.isArray(doc.layers)) {
      throw new KindlingError(`${where}: manifest ${desc.digest} has no config or layers`);
    }
    const configJson = await readVerifiedJson(files, doc.config, "config");
    const layers: FileRange[] = [];
    for (const l of doc.layers) layers.push({ ...(await files.range(blobName(l, where))), digest: l.digest });
    return { configJson, layers };
  }
}

/** Resolves a `docker save` archive (manifest.json). */
export async function resolveDockerArchive(files: ArchiveFiles, tag?: string): Promise<ResolvedImage> {
  const where = files.describe;
  const entries = (await files.readJson("manifest.json")) as {
    Config: string;
    RepoTags?: string[];
    Layers: string[];
  }[];
  if (!Array.isArray(entries) || entries.length === 0)
    throw new KindlingError(`${where}: manifest.json lists no images`);
  let entry = entries[0]!;
  if (tag !== undefined) {
    const hit = entries.find((e) => (e.RepoTags ?? []).some((t) => t === tag || t.endsWith(`:${tag}`)));
    if (!hit) {
      const tags = entries.flatMap((e) => e.RepoTags ?? []).join(", ");
      throw new KindlingError(`${where}: no image tagged ${JSON.stringify(tag)} (tags: ${tags || "none"})`);
    }
    entry = hit;
  } else if (entries.length > 1) {
    const tags = entries.flatMap((e) => e.RepoTags ?? []).join(", ");
    throw new KindlingError(`${where}: holds several images; name one as <path>:<tag> (tags: ${tags})`);
  }
  // docker save names the config by its digest ("<hex>.json" or "blobs/sha256/<hex>"): check it.
  const configBytes = await files.readBytes(entry.Config);
  const named = /(?:^|\/)([0-9a-f]{64})(?:\.json)?$/.exec(entry.Config);
  if (!named)
    throw new KindlingError(`${where}: config ${JSON.stringify(entry.Config)} is not named by its digest`);
  checkDigest(configBytes, `sha256:${named[1]}`, `${where}: config ${entry.Config}`);
  const configJson = parseJson(configBytes, `${where}: config ${entry.Config}`);
  // Layers are checked against the config's diff_ids (digests of the uncompressed tars, which is
  // what docker save writes); a compressed layer could only be checked after decompression.
  const diffIds = (configJson as { rootfs?: { diff_ids?: unknown } })?.rootfs?.diff_ids;
  const layers: FileRange[] = [];
  for (const [i, l] of (entry.Layers ?? []).entries()) {
    const range = await files.range(l);
    const diffId = Array.isArray(diffIds) && diffIds.length === entry.Layers.length ? diffIds[i] : undefined;
    const plain = detectCompression(await readHead(range)) === "none";
    layers.push(plain && typeof diffId === "string" ? { ...range, digest: diffId } : range);
  }
  return { configJson, layers };
}
