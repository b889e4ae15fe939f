import { type Config, config } from "../config/index.js";
import type { ChunkRef, ChunkSource, Digest } from "../store/types.js";
import type { FetchPolicy } from "./types.js";

/** A chunk could not be fetched and verified within its deadline; readers get EIO. */
export class ChunkFetchError extends Error {
  override name = "ChunkFetchError";
}

/** First pause between attempts (doubles each retry); the other bounds are settings (src/config). */
const BACKOFF_MS = 100;

/** The fetch policy of the configuration (KINDLING_FETCH_*), overridden by explicit options. */
export function policyFrom(opts: Partial<FetchPolicy> = {}, cfg: Config = config()): FetchPolicy {
  const deadlineMs = opts.deadlineMs ?? cfg.fetchTimeoutMs;
  return {
    deadlineMs,
    // never longer than the deadline, also when a caller shortens the deadline
    attemptTimeoutMs: opts.attemptTimeoutMs ?? Math.min(cfg.fetchAttemptTimeoutMs, deadlineMs),
    retries: opts.retries ?? cfg.fetchRetries,
    backoffMs: opts.backoffMs ?? BACKOFF_MS,
  };
}

/** sha256 off the event loop (WebCrypto hashes on the thread pool). */
export async function sha256Hex(data: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest(
    "SHA-256",
    new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength),
  );
  return Buffer.from(d).toString("hex");
}

/**
 * Bounds concurrent source fetches. When a slot frees, a waiter a reader is blocked on goes
 * before readahead and prefetch; `urgent` is asked then, so a reader that joins a queued
 * background fetch promotes it.
 */
export class Limiter {
  private active = 0;
  private readonly waiting: { urgent: () => boolean; go: () => void }[] = [];
  constructor(private readonly max: number) {}
  async run<T>(fn: () => Promise<T>, urgent: () => boolean = () => true): Promise<T> {
    // A freed slot is handed straight to the next waiter, so no newcomer can slip in between.
    if (this.active >= this.max) await new Promise<void>((go) => this.waiting.push({ urgent, go }));
    else this.active++;
    try {
      return await fn();
    } finally {
      const i = this.waiting.findIndex((w) => w.urgent());
      const next = this.waiting.splice(Math.max(i, 0), 1)[0];
      if (next) next.go();
      else this.active--;
    }
  }
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

export interface FetchHooks {
  onAttemptError?(err: unknown, verify: boolean): void;
  /** Whether a reader is waiting for this chunk now (else it is readahead or prefetch). */
  urgent?(): boolean;
}

/**
 * Fetches one chunk and checks its length and sha256 before returning it. Each attempt is bounded
 * by attemptTimeoutMs, all of them together by deadlineMs; then it throws ChunkFetchError.
 */
export async function fetchVerified(
  source: ChunkSource,
  ref: Pick<ChunkRef, "digest" | "length">,
  policy: FetchPolicy,
  limiter: Limiter,
  hooks: FetchHooks = {},
): Promise<Buffer> {
  const deadline = new AbortController();
  const timer = setTimeout(
    () => deadline.abort(new Error(`no verified copy within ${policy.deadlineMs} ms`)),
    policy.deadlineMs,
  );
  const end = Date.now() + policy.deadlineMs;
  let last: unknown = new Error("no attempt made");
  try {
    for (let attempt = 0; attempt <= policy.retries && !deadline.signal.aborted; attempt++) {
      if (attempt > 0) {
        const pause = Math.min(policy.backoffMs * 2 ** (attempt - 1), end - Date.now());
        if (pause > 0) await raceAbort(sleep(pause), deadline.signal).catch(() => {});
        if (deadline.signal.aborted) break;
      }
      let verifyFailed = false;
      try {
        return await raceAbort(
          limiter.run(async () => {
            // Queued past the deadline: do not start a request nobody waits for.
            if (deadline.signal.aborted) throw deadline.signal.reason;
            const timeout = Math.max(1, Math.min(policy.attemptTimeoutMs, end - Date.now()));
            const signal = AbortSignal.any([deadline.signal, AbortSignal.timeout(timeout)]);
            const got = await raceAbort(source.fetch(ref.digest as Digest, ref.length, signal), signal);
            const data = Buffer.isBuffer(got) ? got : Buffer.from(got);
            if (data.length !== ref.length || `sha256:${await sha256Hex(data)}` !== ref.digest) {
              verifyFailed = true;
              throw new Error(`got ${data.length} bytes that do not match ${ref.digest}`);
            }
            return data;
          }, hooks.urgent),
          deadline.signal,
        );
      } catch (err) {
        last = err;
        hooks.onAttemptError?.(err, verifyFailed);
      }
    }
  } finally {
    clearTimeout(timer);
  }
  const why = last instanceof Error ? last.message : String(last);
  throw new ChunkFetchError(`chunk ${ref.digest} from ${source.description}: ${why}`);
}
