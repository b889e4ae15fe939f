import type { ChunkRef, ChunkSource, Digest } from "../store/types.js";
import { isChunkSync } from "../store/verify.js";
import { CircuitBreaker } from "./breaker.js";
import { Limiter } from "./limiter.js";
import type { FetchPolicy } from "./policy.js";

/** A chunk could not be fetched and verified within its deadline; readers get EIO. */
export class ChunkFetchError extends Error {
  override name = "ChunkFetchError";
}

/** The source's circuit is open (it let a deadline pass): failed at once, without a request. */
export class SourceUnavailableError extends ChunkFetchError {
  override name = "SourceUnavailableError";
}

/** What a fetcher counts (a lazy daemon's stats embed these). */
export interface FetchCounters {
  /** Bytes fetched (and verified) from the chunk source. */
  bytesFetched: number;
  chunksFetched: number;
  /** Failed fetch attempts (timeouts, source errors) and digest mismatches. */
  fetchErrors: number;
  verifyFailures: number;
  /** Fetches failed at once because the source's circuit was open (see breaker.ts). */
  fetchesRefused: number;
  /** Why the source is unavailable, while its circuit is open or half-open. */
  sourceDown?: string;
  /** Requests at the source right now (a gauge, for timelines). */
  inFlight: number;
  /** Summed time of requests at the source, from the request to verified bytes (ms). */
  sourceMs: number;
  /** Summed time fetches waited for a slot of the concurrency limit (ms). */
  queuedMs: number;
  /** Epoch ms the first request started and the first verified chunk arrived (time to first byte). */
  firstRequestAt?: number;
  firstChunkAt?: number;
  /** Epoch ms the last verified chunk arrived. */
  lastChunkAt?: number;
}

export const newFetchCounters = (): FetchCounters => ({
  bytesFetched: 0,
  chunksFetched: 0,
  fetchErrors: 0,
  verifyFailures: 0,
  fetchesRefused: 0,
  inFlight: 0,
  sourceMs: 0,
  queuedMs: 0,
});

export interface FetchHooks {
  /** Whether a reader is waiting for this chunk now (else it is readahead or prefetch). */
  urgent?(): boolean;
  /** Deadline for this fetch if shorter than the policy's (time already spent waiting on a peer). */
  deadlineMs?: number;
}

export interface FetcherOptions {
  /** Fetches in flight at once (default 8). */
  concurrency?: number;
  log?: (msg: string) => void;
  counters?: FetchCounters;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Rejects when `signal` aborts, even if `p` never settles (a source may ignore its signal). */
function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/**
 * The one retry layer of every chunk read: fetches a chunk from one source, bounded (attempt
 * timeout, overall deadline, retries with backoff), verified (length and sha256), limited in
 * concurrency, behind the source's circuit breaker. Sources themselves make one attempt.
 */
export class ChunkFetcher {
  readonly counters: FetchCounters;
  readonly breaker: CircuitBreaker;
  private readonly limiter: Limiter;

  constructor(
    readonly source: ChunkSource,
    readonly policy: FetchPolicy,
    private readonly opts: FetcherOptions = {},
  ) {
    this.counters = opts.counters ?? newFetchCounters();
    this.limiter = new Limiter(opts.concurrency ?? 8);
    // Probe again soon, but not more often than a deadline's worth of fast failures.
    this.breaker = new CircuitBreaker(Math.min(5000, Math.max(200, policy.deadlineMs)));
  }

  /** Runs fn in one of the source's request slots (a pack range takes one, as a chunk does). */
  slot<T>(fn: () => Promise<T>, urgent?: () => boolean): Promise<T> {
    return this.limiter.run(fn, urgent);
  }

  /**
   * One chunk's verified bytes. Each attempt is bounded by attemptTimeoutMs, all together by
   * deadlineMs; then (or at once, while the breaker is open) it throws ChunkFetchError.
   */
  async fetch(ref: Pick<ChunkRef, "digest" | "length">, hooks: FetchHooks = {}): Promise<Buffer> {
    const admitted = this.breaker.admit();
    if (admitted === "refuse") {
      this.counters.fetchesRefused++;
      throw new SourceUnavailableError(`chunk ${ref.digest}: ${this.counters.sourceDown ?? "source down"}`);
    }
    const deadlineMs = Math.max(1, Math.min(this.policy.deadlineMs, hooks.deadlineMs ?? Infinity));
    const started = Date.now();
    try {
      const data = await this.attempts(ref, deadlineMs, hooks);
      this.breaker.succeeded();
      this.counters.sourceDown = undefined;
      return data;
    } catch (err) {
      if (Date.now() - started >= deadlineMs * 0.95) {
        this.breaker.timedOut();
        this.counters.sourceDown = `${this.source.description} did not answer within ${this.policy.deadlineMs} ms (reads fail fast until it answers again)`;
        this.opts.log?.(`circuit open: ${this.counters.sourceDown}`);
      } else this.breaker.failed(admitted === "probe");
      throw err;
    }
  }

  private async attempts(
    ref: Pick<ChunkRef, "digest" | "length">,
    deadlineMs: number,
    hooks: FetchHooks,
  ): Promise<Buffer> {
    const policy = this.policy;
    const deadline = new AbortController();
    const timer = setTimeout(
      () => deadline.abort(new Error(`no verified copy within ${deadlineMs} ms`)),
      deadlineMs,
    );
    const end = Date.now() + deadlineMs;
    let last: unknown = new Error("no attempt made");
    try {
      for (let attempt = 0; attempt <= policy.retries && !deadline.signal.aborted; attempt++) {
        if (attempt > 0) {
          const pause = Math.min(policy.backoffMs * 2 ** (attempt - 1), end - Date.now());
          if (pause > 0) await raceAbort(sleep(pause), deadline.signal).catch(() => {});
          if (deadline.signal.aborted) break;
        }
        let verifyFailed = false;
        const c = this.counters;
        const queued = Date.now();
        try {
          const data = await raceAbort(
            this.limiter.run(async () => {
              // Queued past the deadline: do not start a request nobody waits for.
              if (deadline.signal.aborted) throw deadline.signal.reason;
              const started = Date.now();
              c.queuedMs += started - queued;
              c.firstRequestAt ??= started;
              c.inFlight++;
              try {
                const timeout = Math.max(1, Math.min(policy.attemptTimeoutMs, end - Date.now()));
                const signal = AbortSignal.any([deadline.signal, AbortSignal.timeout(timeout)]);
                const got = await raceAbort(
                  this.source.fetch(ref.digest as Digest, ref.length, signal),
                  signal,
                );
                const bytes = Buffer.isBuffer(got) ? got : Buffer.from(got);
                if (!isChunkSync(ref, bytes)) {
                  verifyFailed = true;
                  throw new Error(`got ${bytes.length} bytes that do not match ${ref.digest}`);
                }
                return bytes;
              } finally {
                c.inFlight--;
                c.sourceMs += Date.now() - started;
              }
            }, hooks.urgent),
            deadline.signal,
          );
          c.chunksFetched++;
          c.bytesFetched += data.length;
          c.lastChunkAt = Date.now();
          c.firstChunkAt ??= c.lastChunkAt;
          return data;
        } catch (err) {
          last = err;
          this.counters.fetchErrors++;
          if (verifyFailed) this.counters.verifyFailures++;
          this.opts.log?.(`fetch ${ref.digest}: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    } finally {
      clearTimeout(timer);
    }
    const why = last instanceof Error ? last.message : String(last);
    throw new ChunkFetchError(`chunk ${ref.digest} from ${this.source.description}: ${why}`);
  }
}
