import type { LazyStats } from "./types.js";

/** Samples kept in a daemon's timeline: 100 ms apart, so the first minute after the mount. */
const SAMPLE_MS = 100;
const MAX_SAMPLES = 600;

/** Where a cold start's time goes (docs/benchmarks.md, issue 13): reads that waited, and for what. */
export interface ReadTrace {
  /** Epoch ms the FUSE mount was up. */
  mountedAt: number;
  /** Epoch ms of the first read of the lazy file. */
  firstReadAt?: number;
  /** Reads that could not be answered from memory or the on-disk chunk cache at once. */
  slowReads: number;
  /** Summed time readers spent blocked in those reads (ms; overlapping readers add up). */
  readWaitMs: number;
  /** Wall time with at least one reader blocked (ms). */
  blockedMs: number;
  /** Readers blocked right now (a gauge). */
  blocked: number;
  /** The longest single blocked read (ms). */
  maxWaitMs: number;
  /**
   * [ms since the mount, requests at the source, readers blocked, MB fetched so far], every 100 ms
   * while something changes, for the first minute.
   */
  timeline: [number, number, number, number][];
}

export const newReadTrace = (): ReadTrace => ({
  mountedAt: Date.now(),
  slowReads: 0,
  readWaitMs: 0,
  blockedMs: 0,
  blocked: 0,
  maxWaitMs: 0,
  timeline: [],
});

/**
 * Keeps a daemon's ReadTrace: told when a slow read starts and ends, and samples the fetcher's
 * gauges on a timer. Costs nothing on the fast (memory) path.
 */
export class ReadTracer {
  private blockedSince = 0;
  private timer: NodeJS.Timeout | undefined;
  private last = "";

  constructor(private readonly stats: LazyStats & { trace: ReadTrace }) {}

  /** A read that has to wait; call the returned function when it is answered. */
  slowRead(): () => void {
    const t = this.stats.trace;
    const started = Date.now();
    t.firstReadAt ??= started;
    t.slowReads++;
    if (t.blocked++ === 0) this.blockedSince = started;
    return () => {
      const now = Date.now();
      const waited = now - started;
      t.readWaitMs += waited;
      if (waited > t.maxWaitMs) t.maxWaitMs = waited;
      if (--t.blocked === 0) t.blockedMs += now - this.blockedSince;
    };
  }

  /** Any read (fast or slow): notes the first. */
  read(): void {
    this.stats.trace.firstReadAt ??= Date.now();
  }

  start(): void {
    this.timer = setInterval(() => this.sample(), SAMPLE_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private sample(): void {
    const s = this.stats;
    const t = s.trace;
    if (t.timeline.length >= MAX_SAMPLES) {
      this.stop();
      return;
    }
    const point: [number, number, number, number] = [
      Date.now() - t.mountedAt,
      s.inFlight,
      t.blocked,
      Math.round(s.bytesFetched / 1e4) / 100,
    ];
    const key = point.slice(1).join(",");
    if (key === this.last) return;
    this.last = key;
    t.timeline.push(point);
  }
}
