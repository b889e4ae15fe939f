/**
 * Bounds concurrent source fetches (many misses may be in flight at once, up to `max`). When a slot
 * frees, a waiter a reader is blocked on goes before readahead and prefetch; `urgent` is asked then,
 * so a reader that joins a queued background fetch promotes it.
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
