/**
 * A circuit breaker for one chunk source. A source that lets a chunk's whole deadline pass without
 * answering (frozen, not refusing) would make every later read wait out its own deadline too: after
 * one such miss the breaker opens and reads fail at once; after `cooldownMs` one fetch goes through
 * as a probe (half-open) while the others still fail fast; any answer closes it again.
 */
export type BreakerState = "closed" | "open" | "half-open";

export class CircuitBreaker {
  private state: BreakerState = "closed";
  private openedAt = 0;
  private probing = false;
  /** Times it opened (for stats and messages). */
  opened = 0;
  /** Fetches refused while open. */
  rejected = 0;

  constructor(
    readonly cooldownMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  get current(): BreakerState {
    if (this.state === "open" && this.now() - this.openedAt >= this.cooldownMs) return "half-open";
    return this.state;
  }

  /**
   * Asks to start a fetch: "go", "probe" (the one fetch of a half-open breaker: report its outcome
   * with succeeded/timedOut/failed) or "refuse".
   */
  admit(): "go" | "probe" | "refuse" {
    const s = this.current;
    if (s === "closed") return "go";
    if (s === "half-open" && !this.probing) {
      this.probing = true;
      return "probe";
    }
    this.rejected++;
    return "refuse";
  }

  /** The source answered: close. */
  succeeded(): void {
    this.state = "closed";
    this.probing = false;
  }

  /** The source let a deadline pass without an answer: open (again). */
  timedOut(): void {
    if (this.state !== "open" || this.probing) this.opened++;
    this.state = "open";
    this.openedAt = this.now();
    this.probing = false;
  }

  /** A fetch failed for another reason (the source answered, with an error): a probe is over. */
  failed(probe: boolean): void {
    if (probe) {
      this.probing = false;
      this.state = "closed";
    }
  }
}
