/** GET /metrics: Prometheus' text exposition format (version 0.0.4). */
import { imageStats } from "../lazy/stats.js";
import { listImages } from "../store/catalog.js";
import type { KindlingHome } from "../util/home.js";
import type { StoredContainer } from "./records.js";
import type { SupervisorStats } from "./spare.js";

/** A histogram of milliseconds with fixed buckets. */
export class Histogram {
  private readonly counts: number[];
  private sum = 0;
  private count = 0;

  constructor(readonly buckets: number[]) {
    this.counts = buckets.map(() => 0);
  }

  observe(v: number): void {
    this.sum += v;
    this.count++;
    this.buckets.forEach((b, i) => {
      if (v <= b) this.counts[i]!++;
    });
  }

  render(name: string, labels: string): string[] {
    const l = (extra: string) => `{${[labels, extra].filter(Boolean).join(",")}}`;
    return [
      ...this.buckets.map((b, i) => `${name}_bucket${l(`le="${b}"`)} ${this.counts[i]}`),
      `${name}_bucket${l('le="+Inf"')} ${this.count}`,
      `${name}_sum${labels ? `{${labels}}` : ""} ${this.sum}`,
      `${name}_count${labels ? `{${labels}}` : ""} ${this.count}`,
    ];
  }
}

const MS_BUCKETS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000];

export class Metrics {
  private readonly startedAt = Date.now();
  /** Per runtime: prep, boot and first-output times of containers this service started or saw end. */
  private readonly hist = new Map<string, { prep: Histogram; boot: Histogram; firstOutput: Histogram }>();
  private readonly seen = { start: new Set<string>(), exit: new Set<string>() };

  private of(runtime: string) {
    let h = this.hist.get(runtime);
    if (!h) {
      h = {
        prep: new Histogram(MS_BUCKETS),
        boot: new Histogram(MS_BUCKETS),
        firstOutput: new Histogram(MS_BUCKETS),
      };
      this.hist.set(runtime, h);
    }
    return h;
  }

  started(c: StoredContainer): void {
    if (this.seen.start.has(c.record.id)) return;
    this.seen.start.add(c.record.id);
    const h = this.of(c.record.options.runtime);
    if (c.state.prepMs !== undefined) h.prep.observe(c.state.prepMs);
    if (c.state.bootMs !== undefined) h.boot.observe(c.state.bootMs);
  }

  exited(c: StoredContainer): void {
    if (this.seen.exit.has(c.record.id)) return;
    this.seen.exit.add(c.record.id);
    if (c.state.firstOutputMs !== undefined)
      this.of(c.record.options.runtime).firstOutput.observe(c.state.firstOutputMs);
  }

  async render(
    home: KindlingHome,
    containers: StoredContainer[],
    warmImages: number,
    supervisors: SupervisorStats,
  ): Promise<string> {
    const lines: string[] = [];
    const esc = (s: string) => s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
    lines.push("# HELP kindling_uptime_seconds Seconds since this service started.");
    lines.push("# TYPE kindling_uptime_seconds gauge");
    lines.push(`kindling_uptime_seconds ${((Date.now() - this.startedAt) / 1000).toFixed(3)}`);

    lines.push("# HELP kindling_warm_images Images whose lazy daemon the service keeps running.");
    lines.push("# TYPE kindling_warm_images gauge");
    lines.push(`kindling_warm_images ${warmImages}`);
    lines.push(
      "# HELP kindling_supervisors_ready Supervisors ready for the next container: fresh spares, and reused ones idle.",
    );
    lines.push("# TYPE kindling_supervisors_ready gauge");
    lines.push(`kindling_supervisors_ready{kind="fresh"} ${supervisors.fresh}`);
    lines.push(`kindling_supervisors_ready{kind="reused"} ${supervisors.idle}`);
    lines.push(
      "# HELP kindling_supervisors_reused_total Containers handed to a supervisor that had served one before.",
    );
    lines.push("# TYPE kindling_supervisors_reused_total counter");
    lines.push(`kindling_supervisors_reused_total ${supervisors.reused}`);
    lines.push("# HELP kindling_containers Containers on this worker by state and runtime.");
    lines.push("# TYPE kindling_containers gauge");
    const byKey = new Map<string, number>();
    for (const c of containers) {
      const k = `state="${c.state.status}",runtime="${c.record.options.runtime}"`;
      byKey.set(k, (byKey.get(k) ?? 0) + 1);
    }
    for (const [k, n] of byKey) lines.push(`kindling_containers{${k}} ${n}`);

    for (const [metric, key, help] of [
      ["kindling_container_prep_ms", "prep", "Host-side preparation before the process runs (ms)."],
      ["kindling_container_boot_ms", "boot", "VM runtimes: VMM spawn to guest agent ready (ms)."],
      ["kindling_container_first_output_ms", "firstOutput", "Process start to its first output byte (ms)."],
    ] as const) {
      lines.push(`# HELP ${metric} ${help}`);
      lines.push(`# TYPE ${metric} histogram`);
      for (const [runtime, h] of this.hist) lines.push(...h[key].render(metric, `runtime="${esc(runtime)}"`));
    }

    const images = await listImages(home).catch(() => []);
    const stats = await Promise.all(images.map((i) => imageStats(home, i.digest).then((s) => ({ i, s }))));
    for (const [metric, key, help] of [
      [
        "kindling_lazy_fetched_bytes_total",
        "bytesFetched",
        "Bytes the image's lazy file fetched from its chunk source.",
      ],
      ["kindling_lazy_fetch_errors_total", "fetchErrors", "Failed chunk fetch attempts."],
      ["kindling_lazy_cache_hits_total", "cacheHits", "Chunk lookups served from memory or the chunk cache."],
      ["kindling_lazy_cache_misses_total", "cacheMisses", "Chunk lookups that needed the source."],
      ["kindling_lazy_read_errors_total", "readErrors", "Reads of the lazy file answered with EIO."],
    ] as const) {
      lines.push(`# HELP ${metric} ${help}`);
      lines.push(`# TYPE ${metric} counter`);
      for (const { i, s } of stats) lines.push(`${metric}{image="${esc(i.name)}"} ${s[key]}`);
    }
    return `${lines.join("\n")}\n`;
  }
}
