import { type Config, config } from "../config/index.js";

/** Bounds on fetching one chunk: each attempt has a timeout; all attempts share one deadline. */
export interface FetchPolicy {
  /** Total time a read may wait for one chunk before it gets EIO (KINDLING_FETCH_TIMEOUT_MS). */
  deadlineMs: number;
  /** Time one attempt may take (KINDLING_FETCH_ATTEMPT_TIMEOUT_MS). */
  attemptTimeoutMs: number;
  /** Attempts after the first (KINDLING_FETCH_RETRIES). */
  retries: number;
  /** First backoff between attempts; doubles each retry. */
  backoffMs: number;
}

/** First pause between attempts (doubles each retry); the other bounds are settings (src/config). */
const BACKOFF_MS = 100;

/**
 * The one set of retry bounds every chunk read uses (lazy daemon, export, push): the configuration's
 * (KINDLING_FETCH_*), overridden by explicit options.
 */
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
