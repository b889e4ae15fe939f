import { createHash } from "node:crypto";
import type { Digest } from "../store/types.js";
import { KindlingError } from "../util/errors.js";
import { discard, type RegistryClient } from "./client.js";
import { baseline, formatPlatform, hostPlatform, type Platform, platformMatches } from "./platform.js";

export const MEDIA = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerSchema1: "application/vnd.docker.distribution.manifest.v1+prettyjws",
} as const;

/** Everything we can read, best first; registries convert or refuse what is not listed. */
export const MANIFEST_ACCEPT = [
  MEDIA.ociIndex,
  MEDIA.ociManifest,
  MEDIA.dockerList,
  MEDIA.dockerManifest,
].join(", ");

/** Largest manifest we read (containerd's limit): a bound on memory for hostile registries. */
const MAX_MANIFEST_BYTES = 4 << 20;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { architecture?: string; os?: string; variant?: string };
  annotations?: Record<string, string>;
  artifactType?: string;
  urls?: string[];
}

export interface ImageManifest {
  schemaVersion: number;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

interface IndexManifest {
  schemaVersion: number;
  mediaType?: string;
  manifests: Descriptor[];
}

export interface FetchedManifest {
  manifest: ImageManifest;
  /** sha256 of the manifest bytes (the one picked from an index, when there was one). */
  digest: Digest;
  /** Picked from an index by platform (else the reference named one image). */
  fromIndex: boolean;
}

export function sha256Digest(data: Buffer): Digest {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

/** Fetches the manifest for a tag or digest; an index resolves to its image for `platform`. */
export async function fetchImageManifest(
  client: RegistryClient,
  reference: string,
  signal?: AbortSignal,
  platform: Platform = hostPlatform(),
): Promise<FetchedManifest> {
  let got = await fetchManifestBytes(client, reference, signal);
  for (let depth = 0; ; depth++) {
    const parsed = parseManifest(got.bytes, got.contentType, client, reference);
    if (parsed.kind === "image")
      return { manifest: parsed.manifest, digest: got.digest, fromIndex: depth > 0 };
    if (depth > 0) throw new KindlingError(`${client.where}: index ${reference} points at another index`);
    const chosen = pickPlatform(parsed.index.manifests, platform);
    if (!chosen) {
      const have = [
        ...new Set(offered(parsed.index.manifests).map((m) => formatPlatform(m.platform ?? {}))),
      ].join(", ");
      throw new KindlingError(
        `${client.registry}/${client.repository}:${reference} has no ${formatPlatform(platform)} image (it offers: ${have || "none"}); choose one with --platform`,
      );
    }
    got = await fetchManifestBytes(client, chosen.digest, signal);
  }
}

/** The entry for `platform` (attestation entries, platform unknown/unknown, never match). */
export function pickPlatform(
  manifests: Descriptor[],
  platform: Platform = hostPlatform(),
): Descriptor | undefined {
  const candidates = offered(manifests).filter((m) => platformMatches(m.platform, platform));
  // No variant asked: the architecture's baseline (amd64 v1, arm64 v8) before newer variants.
  return (
    candidates.find((m) => platformMatches(m.platform, { ...platform, variant: baseline(platform) })) ??
    candidates[0]
  );
}

/** Image entries, without buildkit's attestation manifests. */
function offered(manifests: Descriptor[]): Descriptor[] {
  return manifests.filter(
    (m) =>
      m.annotations?.["vnd.docker.reference.type"] !== "attestation-manifest" && m.platform?.os !== "unknown",
  );
}

async function fetchManifestBytes(
  client: RegistryClient,
  reference: string,
  signal?: AbortSignal,
): Promise<{ bytes: Buffer; contentType: string; digest: Digest }> {
  const reply = await client.request(`manifests/${reference}`, {
    headers: { accept: MANIFEST_ACCEPT },
    signal,
  });
  const declared = Number(reply.res.headers.get("content-length") ?? 0);
  if (declared > MAX_MANIFEST_BYTES) {
    await discard(reply);
    throw new KindlingError(`${client.where}: manifest ${reference} is ${declared} bytes, more than allowed`);
  }
  let bytes: Buffer;
  try {
    bytes = Buffer.from(await reply.res.arrayBuffer());
  } finally {
    reply.done();
  }
  if (bytes.length > MAX_MANIFEST_BYTES) {
    throw new KindlingError(
      `${client.where}: manifest ${reference} is larger than ${MAX_MANIFEST_BYTES} bytes`,
    );
  }
  const digest = sha256Digest(bytes);
  // Pinned by digest: the bytes must hash to it (a tag's digest is whatever the registry serves).
  if (reference.startsWith("sha256:") && digest !== reference) {
    throw new KindlingError(
      `${client.where}: manifest ${reference} of ${client.repository} has digest ${digest}: corrupted or tampered`,
    );
  }
  return { bytes, contentType: reply.res.headers.get("content-type") ?? "", digest };
}

function parseManifest(
  bytes: Buffer,
  contentType: string,
  client: RegistryClient,
  reference: string,
): { kind: "image"; manifest: ImageManifest } | { kind: "index"; index: IndexManifest } {
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(bytes.toString("utf8")) as Record<string, unknown>;
  } catch {
    throw new KindlingError(`${client.where}: manifest ${reference} of ${client.repository} is not JSON`);
  }
  // The body's mediaType is authoritative; OCI allows leaving it out, then the header or shape decides.
  const type = (typeof body.mediaType === "string" && body.mediaType) || contentType.split(";")[0]!.trim();
  if (type === MEDIA.dockerSchema1 || body.schemaVersion === 1) {
    throw new KindlingError(
      `${client.where}: ${client.repository}:${reference} is a Docker schema 1 manifest, which is not supported`,
    );
  }
  const looksIndex = Array.isArray(body.manifests);
  if (type === MEDIA.ociIndex || type === MEDIA.dockerList || (looksIndex && !body.config)) {
    if (!looksIndex) throw new KindlingError(`${client.where}: index ${reference} has no manifests list`);
    return { kind: "index", index: body as unknown as IndexManifest };
  }
  const m = body as unknown as ImageManifest;
  if (!m.config || typeof m.config.digest !== "string" || !Array.isArray(m.layers)) {
    throw new KindlingError(
      `${client.where}: manifest ${reference} of ${client.repository} has an unknown type "${type}"`,
    );
  }
  for (const d of [m.config, ...m.layers]) checkDescriptor(d, client, reference);
  return { kind: "image", manifest: m };
}

function checkDescriptor(d: Descriptor, client: RegistryClient, reference: string): void {
  if (typeof d.digest !== "string" || !/^sha256:[0-9a-f]{64}$/.test(d.digest)) {
    throw new KindlingError(
      `${client.where}: manifest ${reference} names blob "${String(d.digest)}"; only sha256 digests are supported`,
    );
  }
  if (typeof d.size !== "number" || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw new KindlingError(`${client.where}: manifest ${reference} gives blob ${d.digest} a bad size`);
  }
}
