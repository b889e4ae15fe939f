import type { ChunkCache } from "./cache.js";

/**
 * Background chunk loads (file-aware readahead) with a bounded number in the chunk path at once,
 * so queued work never waits in the fetcher's limiter long enough to meet a fetch deadline (which
 * would count against the source's circuit breaker). Readers never queue here: their loads go
 * straight to the cache, and the limiter hands a freed slot to a reader first.
 */
export class BackgroundLoads {
  private readonly queue: { chunk: number; done: (fetched: boolean) => void }[] = [];
  private readonly queued = new Set<number>();
  private running = 0;

  constructor(
    private readonly cache: ChunkCache,
    private readonly concurrency: number,
    private readonly log: (msg: string) => void,
  ) {}

  /** Queues chunk `i` (once); `done` is told whether it had to be fetched. */
  add(i: number, done: (fetched: boolean) => void = () => {}): void {
    if (this.queued.has(i)) return;
    this.queued.add(i);
    this.queue.push({ chunk: i, done });
    this.pump();
  }

  get pending(): number {
    return this.queue.length + this.running;
  }

  private pump(): void {
    while (this.running < this.concurrency && this.queue.length > 0) {
      const job = this.queue.shift()!;
      this.running++;
      this.cache
        .warm(job.chunk)
        .then(job.done)
        .catch((err) =>
          this.log(`background load of chunk ${job.chunk}: ${err instanceof Error ? err.message : err}`),
        )
        .finally(() => {
          this.running--;
          this.queued.delete(job.chunk);
          this.pump();
        });
    }
  }
}
