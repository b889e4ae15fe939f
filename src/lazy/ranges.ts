/**
 * The startup ranges of an image (store/packs.ts RangePackDesc): the byte ranges a first run read,
 * each with its own sha256, fetched as one blob at the daemon's start. Each range is verified as it
 * arrives and then serves any read that lies inside it, without the whole chunks around it: a cold
 * start fetches about what it reads. A read of a range still on its way waits for it; a read outside
 * the ranges, or of a range that failed (bad digest, the request failed or outlived the deadline),
 * takes the chunk path as before, so a bad pack costs time, never a wrong byte.
 * The ranges are kept in memory while the daemon runs (the chunk store holds whole chunks only).
 */
import { createHash } from "node:crypto";
import type { FetchCounters } from "../chunks/fetcher.js";
import type { RangeSource } from "../chunks/packloader.js";
import type { RangePackDesc } from "../store/packs.js";
import type { Digest } from "../store/types.js";
import type { LazyStats } from "./types.js";

interface Range {
  offset: number;
  length: number;
  hex: string;
  data?: Buffer;
  failed: boolean;
  /** Readers waiting for it: told true when it arrived, false when it failed. */
  waiters: ((ok: boolean) => void)[];
}

export class StartupRanges {
  /** By offset (they never overlap: checkPacks). */
  private readonly sorted: Range[];
  /** In pack order. */
  private readonly order: Range[];
  private settled = false;

  constructor(
    readonly pack: RangePackDesc,
    private readonly stats: LazyStats & FetchCounters,
    private readonly log: (msg: string) => void,
  ) {
    this.order = pack.ranges.map(([offset, length, hex]) => ({
      offset,
      length,
      hex,
      failed: false,
      waiters: [],
    }));
    this.sorted = [...this.order].sort((a, b) => a.offset - b.offset);
  }

  /** The range holding all of [pos, pos+len), if any. */
  private find(pos: number, len: number): Range | undefined {
    let lo = 0;
    let hi = this.sorted.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = this.sorted[mid];
      if (pos < r.offset) hi = mid - 1;
      else if (pos >= r.offset + r.length) lo = mid + 1;
      else return pos + len <= r.offset + r.length ? r : undefined;
    }
    return undefined;
  }

  /**
   * Serves a read from the ranges: the bytes copied (synchronously), a promise of them (the range
   * is on its way; -1 if it failed meanwhile), or undefined (not inside a usable range).
   */
  serve(target: Buffer, pos: number, len: number): number | Promise<number> | undefined {
    if (len <= 0) return undefined;
    const r = this.find(pos, len);
    if (!r || r.failed) return undefined;
    const copy = () => {
      r.data!.copy(target, 0, pos - r.offset, pos - r.offset + len);
      this.stats.reads++;
      this.stats.cacheHits++;
      this.stats.bytesServed += len;
      return len;
    };
    if (r.data) return copy();
    if (this.settled) return undefined;
    return new Promise<number>((resolve) => r.waiters.push((ok) => resolve(ok ? copy() : -1)));
  }

  /**
   * Fetches the pack with one request through `slot` (the fetcher's concurrency limit), within
   * `deadlineMs`. Never rejects: what did not arrive verified is marked failed (its readers take the
   * chunk path). Resolves with the ranges and bytes that arrived.
   */
  async load(
    source: RangeSource,
    slot: <T>(fn: () => Promise<T>) => Promise<T>,
    deadlineMs: number,
  ): Promise<{ ranges: number; bytes: number }> {
    const c = this.stats;
    const p = this.stats.profile;
    p.state = "running";
    let k = 0;
    let got = 0;
    let bytes = 0;
    try {
      await slot(async () => {
        const ctl = new AbortController();
        const timer = setTimeout(
          () => ctl.abort(new Error(`startup ranges not done within ${deadlineMs} ms`)),
          deadlineMs,
        );
        const began = Date.now();
        c.firstRequestAt ??= began;
        c.inFlight++;
        try {
          const body = await source.openRange(this.pack.digest as Digest, 0, this.pack.size, ctl.signal);
          let buf = Buffer.allocUnsafe(this.order[0].length);
          let filled = 0;
          for await (const part of body) {
            for (let at = 0; at < part.length; ) {
              if (k >= this.order.length) throw new Error("the pack sent more bytes than its ranges");
              const r = this.order[k];
              const take = Math.min(r.length - filled, part.length - at);
              buf.set(part.subarray(at, at + take), filled);
              filled += take;
              at += take;
              if (filled < r.length) continue;
              if (createHash("sha256").update(buf).digest("hex") === r.hex) {
                this.arrive(r, buf);
                got++;
                bytes += r.length;
              } else {
                c.verifyFailures++;
                this.fail(r);
                this.log(
                  `startup range ${r.offset}+${r.length} does not match its digest: read through chunks`,
                );
              }
              k++;
              filled = 0;
              if (k < this.order.length) buf = Buffer.allocUnsafe(this.order[k].length);
            }
          }
          if (k < this.order.length) throw new Error("the pack ended early");
        } finally {
          clearTimeout(timer);
          ctl.abort();
          c.inFlight--;
          c.sourceMs += Date.now() - began;
        }
      });
    } catch (err) {
      c.fetchErrors++;
      p.errors++;
      this.log(
        `startup ranges: ${err instanceof Error ? err.message : err}; ${this.order.length - k} ranges read through chunks`,
      );
    }
    this.settled = true;
    for (const r of this.order) if (!r.data) this.fail(r);
    p.ranges = got;
    p.bytes += bytes;
    p.state = "done";
    return { ranges: got, bytes };
  }

  private arrive(r: Range, data: Buffer): void {
    const c = this.stats;
    c.bytesFetched += data.length;
    c.lastChunkAt = Date.now();
    c.firstChunkAt ??= c.lastChunkAt;
    r.data = data;
    for (const w of r.waiters.splice(0)) w(true);
  }

  private fail(r: Range): void {
    r.failed = true;
    for (const w of r.waiters.splice(0)) w(false);
  }
}
