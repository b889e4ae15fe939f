import type { Digest, RunConfig } from "../store/types.js";
import { KindlingError } from "../util/errors.js";
import type { ImageManifest } from "./manifest.js";

/** How a converted Kindling image is laid out in a registry (an OCI 1.1 artifact manifest). */
export const KINDLING_ARTIFACT_TYPE = "application/vnd.kindling.image.v1";
export const KINDLING_CONFIG_MEDIA_TYPE = "application/vnd.kindling.config.v1+json";
export const KINDLING_CHUNK_MEDIA_TYPE = "application/vnd.kindling.chunk.v1";

/** The config blob of a Kindling artifact. No timestamps, so pushing twice gives the same manifest. */
export interface KindlingConfig {
  /** sha256 of the block index blob: the image's content address. */
  digest: Digest;
  blockSize: number;
  runConfig: RunConfig;
  /**
   * The image's startup profile ({ image, chunks }: src/lazy/profile.ts), when the pushing home
   * had one. Checked by whoever uses it: a bad one is ignored with a warning, never an error.
   */
  startupProfile?: unknown;
  /**
   * Its packs ({ image, segments, startup? }: src/chunks/packs.ts), blobs listed as layers too.
   * Checked by whoever uses them: bad ones are ignored with a warning, never an error.
   */
  packs?: unknown;
}

export function isKindlingManifest(m: ImageManifest): boolean {
  return m.artifactType === KINDLING_ARTIFACT_TYPE || m.config.mediaType === KINDLING_CONFIG_MEDIA_TYPE;
}

export function parseKindlingConfig(buf: Buffer, where: string): KindlingConfig {
  let c: Partial<KindlingConfig>;
  try {
    c = JSON.parse(buf.toString("utf8")) as Partial<KindlingConfig>;
  } catch {
    throw new KindlingError(`${where}: Kindling config blob is not JSON`);
  }
  const rc = c.runConfig;
  const strings = (v: unknown) => Array.isArray(v) && v.every((s) => typeof s === "string");
  if (
    !rc ||
    !strings(rc.entrypoint) ||
    !strings(rc.cmd) ||
    !strings(rc.env) ||
    typeof rc.workingDir !== "string" ||
    typeof rc.user !== "string" ||
    typeof c.digest !== "string" ||
    typeof c.blockSize !== "number"
  ) {
    throw new KindlingError(`${where}: Kindling config blob lacks digest, blockSize or a valid runConfig`);
  }
  return c as KindlingConfig;
}
