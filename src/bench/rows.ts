/** One measured run in `kindling bench` (the columns issue 6 asks for). */
export interface BenchRow {
  runtime: string;
  rootfs: string;
  image: string;
  bindMounts: number;
  cache: "cold" | "warm";
  /** Host-side rootfs preparation (Runtime.prepare, or the runtime's own prepMs when it reports one), ms. */
  prepMs: number;
  /** From the start of `run` (before prepare) to the first byte of the process's output, ms. */
  firstOutputMs: number;
  /** From the start of `run` to the process's exit and the release of everything it held, ms. */
  totalMs: number;
  /** Bytes fetched from the store (registry) during the run. */
  fetchedBytes: number;
  /** Runs whose lazy daemon fetched: from the start of `run` to its first chunk from the registry, ms. */
  ttfbMs?: number;
  /** Runs that fetched: fetchedBytes per second of the run (totalMs), MB/s. */
  fetchMBps?: number;
  /** Bytes of the image's block image. */
  blockSize: number;
  /** Per-container disk used on the host (allocated blocks of the run dir), bytes. */
  diskBytes: number;
  /** VM runtimes only: guest boot time as the runtime reports it, ms. */
  bootMs?: number;
  /** Repetitions this row is the median of (1 for a single run). */
  reps?: number;
}

/** The numeric columns a median row takes the median of. */
export const NUMERIC_COLUMNS = [
  "prepMs",
  "firstOutputMs",
  "totalMs",
  "fetchedBytes",
  "ttfbMs",
  "fetchMBps",
  "diskBytes",
  "bootMs",
] as const satisfies (keyof BenchRow)[];

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** The median row of repeated runs of one variant (each numeric column's median). */
export function medianRow(rows: BenchRow[]): BenchRow {
  const first = rows[0]!;
  const out: BenchRow = { ...first, reps: rows.length };
  for (const key of NUMERIC_COLUMNS) {
    const values = rows.map((r) => r[key]).filter((v): v is number => typeof v === "number");
    if (values.length > 0) out[key] = median(values);
    else delete out[key];
  }
  return out;
}

/** "runc:lazy:big:0:warm": what --filter matches against. */
export function variantKey(
  r: Pick<BenchRow, "runtime" | "rootfs" | "image" | "bindMounts" | "cache">,
): string {
  return `${r.runtime}:${r.rootfs}:${r.image}:${r.bindMounts}:${r.cache}`;
}
