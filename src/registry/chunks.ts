import type { ChunkSource, Digest, ImageOrigin } from "../store/types.js";
import { KindlingError } from "../util/errors.js";
import { fetchBlob, openBlobRange } from "./blob.js";
import { RegistryClient } from "./client.js";
import type { Credentials } from "./credentials.js";
import type { RegistrySettings } from "./settings.js";

export type RegistryOrigin = Extract<ImageOrigin, { kind: "registry" }>;

export interface RegistryChunkSourceOptions {
  /** Time allowed per attempt for one chunk (headers and each stall of the body); default 30 s. */
  timeoutMs?: number;
  /** Attempts for transient failures; default 3. */
  attempts?: number;
  /** undefined: env / auth file; null: anonymous. */
  credentials?: Credentials | null;
  /** Where credentials and registries.conf are found; default from src/config. */
  settings?: RegistrySettings;
}

/**
 * Chunks of a pushed Kindling image, fetched one blob at a time from its registry repository. One
 * client (and so one bearer token) serves every fetch. Verifying is the caller's job.
 */
export class RegistryChunkSource implements ChunkSource {
  readonly description: string;
  private readonly client: RegistryClient;

  constructor(origin: ImageOrigin, opts: RegistryChunkSourceOptions = {}) {
    if (origin.kind !== "registry") throw new KindlingError("RegistryChunkSource needs a registry origin");
    this.description = `registry ${origin.registry}/${origin.repository}`;
    this.client = new RegistryClient({
      registry: origin.registry,
      repository: origin.repository,
      insecure: origin.insecure,
      credentials: opts.credentials,
      settings: opts.settings,
      timeoutMs: opts.timeoutMs ?? 30_000,
      idleTimeoutMs: opts.timeoutMs ?? 30_000,
      attempts: opts.attempts ?? 3,
    });
  }

  /** The chunk's bytes; errors name the status, the digest and the registry. */
  async fetch(digest: Digest, length: number, signal?: AbortSignal): Promise<Buffer> {
    try {
      return await fetchBlob(this.client, digest, length, signal);
    } catch (err) {
      if (!(err instanceof KindlingError) || err.message.includes(digest)) throw err;
      throw new KindlingError(`chunk ${digest} from ${this.description}: ${err.message}`, err.code);
    }
  }

  /** Bytes [start, end) of a pack blob (chunks/packs.ts), streamed. */
  openRange(
    digest: Digest,
    start: number,
    end: number,
    signal: AbortSignal,
  ): Promise<AsyncIterable<Uint8Array>> {
    return openBlobRange(this.client, digest, start, end, signal);
  }
}
