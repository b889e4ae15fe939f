import type { ChunkStore } from "../store/chunkstore.js";
import type { ChunkRef } from "../store/types.js";
import type { ChunkFetcher } from "./fetcher.js";

export type Loaded = { data: Buffer; fetched: boolean };

/** A load taken over by the caller (a pack fetch): settle it exactly once. */
export interface Claim {
  resolve(loaded: Loaded): void;
  reject(err: unknown): void;
}

/** How long a chunk that could not be fetched fails at once, without a new fetch. */
const FAILURE_TTL_MS = 2000;

/**
 * A chunk's verified bytes from the store tier, else from the fetcher (then committed to the
 * store). Concurrent loads of one digest in this process share one promise; other processes
 * fetching it are waited for through the store's fetch lock. Any number of loads may be in
 * flight; the fetcher bounds how many reach the source at once.
 */
export class ChunkLoader {
  private readonly inflight = new Map<string, Promise<Loaded>>();
  private readonly failed = new Map<string, { err: unknown; until: number }>();

  constructor(
    readonly store: ChunkStore,
    readonly fetcher: ChunkFetcher,
  ) {}

  isLoading(digest: string): boolean {
    return this.inflight.has(digest);
  }

  /** `urgent`: whether a reader waits for it now (readahead and prefetch yield to readers). */
  load(ref: Pick<ChunkRef, "digest" | "length">, urgent?: () => boolean): Promise<Loaded> {
    let p = this.inflight.get(ref.digest);
    if (p) return p;
    // The kernel retries a failed page read at once; answer it from the recent failure instead of
    // waiting out a second deadline.
    const failed = this.failed.get(ref.digest);
    if (failed && failed.until > Date.now()) return Promise.reject(failed.err);
    this.failed.delete(ref.digest);
    p = this.loadOnce(ref, urgent)
      .catch((err) => {
        this.failed.set(ref.digest, { err, until: Date.now() + FAILURE_TTL_MS });
        throw err;
      })
      .finally(() => this.inflight.delete(ref.digest));
    this.inflight.set(ref.digest, p);
    return p;
  }

  /**
   * Takes over the load of a chunk nobody is loading (nor failed to, just now): the caller settles
   * it, and load() calls of the digest meanwhile join it. undefined when one is in flight already.
   */
  claim(ref: Pick<ChunkRef, "digest" | "length">): Claim | undefined {
    if (this.inflight.has(ref.digest)) return undefined;
    const failed = this.failed.get(ref.digest);
    if (failed && failed.until > Date.now()) return undefined;
    let claim!: Claim;
    const p = new Promise<Loaded>((resolve, reject) => {
      claim = { resolve, reject };
    })
      .catch((err) => {
        this.failed.set(ref.digest, { err, until: Date.now() + FAILURE_TTL_MS });
        throw err;
      })
      .finally(() => this.inflight.delete(ref.digest));
    p.catch(() => {}); // nobody may have joined: the failure is the claimant's to report
    this.inflight.set(ref.digest, p);
    return claim;
  }

  /** A chunk's verified bytes (export, push): `load` without the `fetched` flag. */
  async read(ref: Pick<ChunkRef, "digest" | "length">): Promise<Buffer> {
    return (await this.load(ref)).data;
  }

  private async loadOnce(ref: Pick<ChunkRef, "digest" | "length">, urgent?: () => boolean): Promise<Loaded> {
    const have = await this.store.get(ref);
    if (have) return { data: have, fetched: false };
    const until = Date.now() + this.fetcher.policy.deadlineMs;
    const added = await this.store.add(ref, until);
    if (Buffer.isBuffer(added)) return { data: added, fetched: true };
    let data: Buffer;
    try {
      data = await this.fetcher.fetch(ref, { urgent, deadlineMs: until - Date.now() });
    } catch (err) {
      await added.abort();
      throw err;
    }
    await added.commit(data);
    return { data, fetched: true };
  }
}
