import { readFile } from "node:fs/promises";
import type { ImageOrigin } from "../image/types.js";
import type { ChunkSource, Digest } from "../store/types.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import type { DaemonMessage, FetchPolicy, ParentMessage } from "./types.js";

/** Reads a chunk from the local blob store (the same directory as the chunk cache). */
export class BlobFileSource implements ChunkSource {
  readonly description: string;
  constructor(private readonly home: KindlingHome) {
    this.description = `local store ${home.blobs}`;
  }
  async fetch(digest: Digest, _length: number, signal?: AbortSignal): Promise<Buffer> {
    try {
      return await readFile(this.home.blobPath(digest), { signal });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") {
        throw new KindlingError(`chunk ${digest} is missing from ${this.description}`);
      }
      throw err;
    }
  }
}

type SourceCtor = new (...args: unknown[]) => ChunkSource;

/** Loads a module that may not exist yet in this tree (another component); null if absent. */
async function optionalExport(specifier: string, name: string): Promise<SourceCtor | null> {
  try {
    const mod = (await import(specifier)) as Record<string, unknown>;
    return typeof mod[name] === "function" ? (mod[name] as SourceCtor) : null;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ERR_MODULE_NOT_FOUND") return null;
    throw err;
  }
}

/**
 * The source the daemon uses with source "auto": the local store for images built or imported
 * here, the registry for pulled ones. Retries are ours (fetch.ts), so the registry gets one attempt.
 */
export async function autoSource(
  home: KindlingHome,
  origin: ImageOrigin,
  policy: FetchPolicy,
): Promise<ChunkSource> {
  if (origin.kind === "registry") {
    const Registry = await optionalExport("../registry/chunks.js", "RegistryChunkSource");
    if (!Registry) throw new KindlingError("this build has no registry support (src/registry/chunks.ts)");
    return new Registry(origin, { timeoutMs: policy.attemptTimeoutMs, attempts: 1 });
  }
  const Local = await optionalExport("../store/index.js", "LocalChunkSource");
  return Local ? new Local(home) : new BlobFileSource(home);
}

/** In the daemon: a source whose fetches are served by the parent process over IPC. */
export class IpcChunkSource implements ChunkSource {
  readonly description: string;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(b: Buffer): void; reject(e: Error): void }>();

  constructor(description: string) {
    this.description = description;
    process.on("message", (m: ParentMessage) => {
      if (m.t !== "chunk" && m.t !== "error") return;
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.t === "chunk") p.resolve(Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength));
      else p.reject(new Error(m.message));
    });
    process.on("disconnect", () => {
      for (const p of this.pending.values()) p.reject(new Error("the owning process is gone"));
      this.pending.clear();
    });
  }

  fetch(digest: Digest, length: number, signal?: AbortSignal): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      if (!process.connected) return reject(new Error("the owning process is gone"));
      const id = this.nextId++;
      this.pending.set(id, { resolve, reject });
      signal?.addEventListener(
        "abort",
        () => {
          if (!this.pending.delete(id)) return;
          send({ t: "abort", id });
          reject(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
        },
        { once: true },
      );
      send({ t: "fetch", id, digest, length });
    });
  }
}

export function send(m: DaemonMessage): void {
  if (process.connected) process.send?.(m);
}
