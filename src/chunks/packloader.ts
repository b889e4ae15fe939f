import type { ChunkWriter } from "../store/chunkstore.js";
import type { ImagePacks, PackDesc } from "../store/packs.js";
import type { BlockIndex, ChunkRef, Digest } from "../store/types.js";
import { isChunkSync } from "../store/verify.js";
import type { ChunkLoader, Claim } from "./loader.js";

/** A source that can stream a byte range of a blob (a registry: HTTP Range). */
export interface RangeSource {
  /** Bytes [start, end) of blob `digest`; fails unless exactly that range is coming. */
  openRange(
    digest: Digest,
    start: number,
    end: number,
    signal: AbortSignal,
  ): Promise<AsyncIterable<Uint8Array>>;
}

export const hasRanges = (s: unknown): s is RangeSource =>
  typeof (s as Partial<RangeSource>)?.openRange === "function";

interface Item {
  pos: number;
  chunk: number;
  ref: ChunkRef;
  claim: Claim;
  writer?: ChunkWriter;
  settled: boolean;
  fetched?: boolean;
}

/** Chunks (and their bytes) a load fetched from the source. */
export interface Fetched {
  chunks: number;
  bytes: number;
}

const sum = (xs: Fetched[]): Fetched =>
  xs.reduce((a, b) => ({ chunks: a.chunks + b.chunks, bytes: a.bytes + b.bytes }), { chunks: 0, bytes: 0 });

/**
 * Loads many chunks with one request: a range of a pack blob (packs.ts), cut into chunks as it
 * streams, each verified (length and sha256) and kept in blobs/ like any fetched chunk, and handed
 * to readers as soon as it is whole. It claims each chunk in the loader first, so readers that want
 * one join this fetch; chunks already local, or being loaded, are skipped. A range that fails or
 * stalls leaves its undelivered chunks to the one-chunk path (retries, the chunk's deadline, the
 * breaker), so a bad pack costs time, never a wrong byte.
 */
export class PackLoader {
  /** For each chunk number, the segment holding it and its position there (-1: none). */
  private readonly segmentOf: Int32Array;
  private readonly positionOf: Int32Array;
  private readonly offsets = new WeakMap<PackDesc, Float64Array>();

  constructor(
    readonly index: BlockIndex,
    readonly packs: ImagePacks,
    private readonly loader: ChunkLoader,
    private readonly source: RangeSource,
    private readonly opts: {
      /** Whether a reader waits for this digest now (the request then goes first at the limiter). */
      wanted(digest: string): boolean;
      /** Whether the memory tier has it already (then it is not claimed, nor looked for on disk). */
      inMemory?(digest: string): boolean;
      /** A chunk arrived (verified): the memory tier keeps it. */
      arrived?(chunk: number, data: Buffer): void;
      log?(msg: string): void;
    },
  ) {
    this.segmentOf = new Int32Array(index.chunks.length).fill(-1);
    this.positionOf = new Int32Array(index.chunks.length).fill(-1);
    for (const [n, s] of packs.segments.entries()) {
      for (const [pos, c] of s.chunks.entries()) {
        if (this.segmentOf[c] >= 0) continue;
        this.segmentOf[c] = n;
        this.positionOf[c] = pos;
      }
    }
  }

  get hasSegments(): boolean {
    return this.packs.segments.length > 0;
  }

  /**
   * Loads chunk numbers [first, last] through the segments that hold them (one ranged request per
   * run of consecutive missing chunks of a segment). Resolves with the chunks it fetched.
   */
  async loadChunks(first: number, last: number): Promise<Fetched> {
    const bySegment = new Map<number, number[]>();
    for (let i = first; i <= last && i < this.index.chunks.length; i++) {
      const s = this.segmentOf[i];
      if (s < 0) continue;
      const list = bySegment.get(s) ?? [];
      list.push(this.positionOf[i]);
      bySegment.set(s, list);
    }
    const got = await Promise.all(
      [...bySegment].map(([s, positions]) => this.loadPositions(this.packs.segments[s], positions)),
    );
    return sum(got);
  }

  /** Loads a whole pack (the startup pack): resolves with the chunks it fetched. */
  loadPack(pack: PackDesc): Promise<Fetched> {
    return this.loadPositions(
      pack,
      pack.chunks.map((_, pos) => pos),
    );
  }

  private async loadPositions(pack: PackDesc, positions: number[]): Promise<Fetched> {
    const store = this.loader.store;
    const until = Date.now() + this.loader.fetcher.policy.deadlineMs;
    // Claimed at once (synchronously), so readers arriving from now on join these loads.
    const items: Item[] = [];
    for (const pos of positions) {
      const chunk = pack.chunks[pos];
      const ref = this.index.chunks[chunk];
      if (this.opts.inMemory?.(ref.digest)) continue;
      const claim = this.loader.claim(ref);
      if (claim) items.push({ pos, chunk, ref, claim, settled: false });
    }
    if (items.length === 0) return { chunks: 0, bytes: 0 };
    // Already local, or published by a peer process meanwhile: no request for those.
    await Promise.all(
      items.map(async (it) => {
        try {
          const have = await store.get(it.ref);
          if (have) this.settle(it, { data: have, fetched: false });
          else it.writer = store.unlockedWriter(it.ref);
        } catch (err) {
          it.settled = true;
          it.claim.reject(err);
        }
      }),
    );
    const runs: Item[][] = [];
    for (const it of items) {
      if (!it.writer) continue;
      const run = runs.at(-1);
      if (run && run.at(-1)!.pos === it.pos - 1) run.push(it);
      else runs.push([it]);
    }
    return sum(await Promise.all(runs.map((run) => this.fetchRun(pack, run, until))));
  }

  private offsetsOf(pack: PackDesc): Float64Array {
    let off = this.offsets.get(pack);
    if (!off) {
      off = new Float64Array(pack.chunks.length + 1);
      pack.chunks.forEach((c, pos) => {
        off![pos + 1] = off![pos] + this.index.chunks[c].length;
      });
      this.offsets.set(pack, off);
    }
    return off;
  }

  /** One ranged request for a run of consecutive positions; the chunks it did not deliver go one by one. */
  private async fetchRun(pack: PackDesc, run: Item[], until: number): Promise<Fetched> {
    const fetcher = this.loader.fetcher;
    const c = fetcher.counters;
    const off = this.offsetsOf(pack);
    const start = off[run[0].pos];
    const end = off[run.at(-1)!.pos + 1];
    let delivered = 0;
    const urgent = () => run.some((it) => !it.settled && this.opts.wanted(it.ref.digest));
    try {
      await fetcher.slot(async () => {
        const ctl = new AbortController();
        const timer = setTimeout(
          () => ctl.abort(new Error(`pack range not done within the deadline`)),
          Math.max(1, until - Date.now()),
        );
        const began = Date.now();
        c.firstRequestAt ??= began;
        c.inFlight++;
        try {
          const body = await this.source.openRange(pack.digest, start, end, ctl.signal);
          let k = 0;
          let buf = Buffer.allocUnsafe(run[0].ref.length);
          let filled = 0;
          for await (const part of body) {
            for (let p = 0; p < part.length; ) {
              if (k >= run.length) throw new Error(`pack ${pack.digest} sent more bytes than asked`);
              const it = run[k];
              const take = Math.min(it.ref.length - filled, part.length - p);
              buf.set(part.subarray(p, p + take), filled);
              filled += take;
              p += take;
              if (filled < it.ref.length) continue;
              if (!isChunkSync(it.ref, buf)) {
                c.verifyFailures++;
                throw new Error(`chunk ${it.ref.digest} in pack ${pack.digest} does not match its digest`);
              }
              this.deliver(it, buf, true);
              delivered++;
              k++;
              filled = 0;
              if (k < run.length) buf = Buffer.allocUnsafe(run[k].ref.length);
            }
          }
          if (k < run.length) throw new Error(`pack ${pack.digest}: the range ended early`);
        } finally {
          clearTimeout(timer);
          ctl.abort();
          c.inFlight--;
          c.sourceMs += Date.now() - began;
        }
      }, urgent);
    } catch (err) {
      c.fetchErrors++;
      this.opts.log?.(
        `pack range ${start}-${end} of ${pack.digest}: ${err instanceof Error ? err.message : err}; ` +
          `${run.length - delivered} chunks one by one`,
      );
    }
    const rest = run.filter((it) => !it.settled);
    await Promise.all(rest.map((it) => this.fetchOne(it, until)));
    const got = run.filter((it) => it.fetched);
    return { chunks: got.length, bytes: got.reduce((n, it) => n + it.ref.length, 0) };
  }

  /** The one-chunk path for what a range did not deliver: the fetcher's retries within the deadline. */
  private async fetchOne(it: Item, until: number): Promise<void> {
    try {
      const data = await this.loader.fetcher.fetch(it.ref, {
        urgent: () => this.opts.wanted(it.ref.digest),
        deadlineMs: until - Date.now(),
      });
      this.deliver(it, data, false);
    } catch (err) {
      await it.writer?.abort();
      it.settled = true;
      it.claim.reject(err);
    }
  }

  /** `fromRange`: counted here (the fetcher counted the chunks it fetched itself). */
  private deliver(it: Item, data: Buffer, fromRange: boolean): void {
    if (fromRange) {
      const c = this.loader.fetcher.counters;
      c.chunksFetched++;
      c.bytesFetched += data.length;
      c.lastChunkAt = Date.now();
      c.firstChunkAt ??= c.lastChunkAt;
    }
    it.fetched = true;
    // Readers first; the write to blobs/ (and the fetch lock's release) follows.
    this.settle(it, { data, fetched: true });
    void it.writer?.commit(data);
  }

  private settle(it: Item, loaded: { data: Buffer; fetched: boolean }): void {
    it.settled = true;
    this.opts.arrived?.(it.chunk, loaded.data);
    it.claim.resolve(loaded);
  }
}
