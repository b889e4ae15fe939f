/** Issue 6's targets, checked against the median rows: each is met, missed, or not measured. */
import { formatBytes, formatMs, formatPercent } from "./format.js";
import { table } from "./report.js";
import type { BenchRow } from "./rows.js";

export interface TargetResult {
  target: string;
  /** Which rows it was checked on. */
  subject: string;
  /** The measured figure. */
  value: string;
  /** null: the rows needed were not measured. */
  met: boolean | null;
}

const find = (rows: BenchRow[], q: Partial<BenchRow>) =>
  rows.find((r) => Object.entries(q).every(([k, v]) => r[k as keyof BenchRow] === v));

/** Runtimes that have rows with the lazy strategy (runc, runsc, qemu, ...). */
const lazyRuntimes = (rows: BenchRow[]) => [
  ...new Set(rows.filter((r) => r.rootfs === "lazy").map((r) => r.runtime)),
];

export function evaluateTargets(rows: BenchRow[]): TargetResult[] {
  const out: TargetResult[] = [];
  const base = { bindMounts: 0 };
  for (const runtime of lazyRuntimes(rows)) {
    const large = find(rows, { ...base, runtime, rootfs: "lazy", image: "large", cache: "warm" });
    const small = find(rows, { ...base, runtime, rootfs: "lazy", image: "small", cache: "warm" });
    out.push({
      target: "lazy warm prepMs < 50 ms on the large image",
      subject: `${runtime}/lazy large warm`,
      value: large ? `${formatMs(large.prepMs)} ms` : "not measured",
      met: large ? large.prepMs < 50 : null,
    });
    // "Independent of size": within 25% (or 10 ms) of the small image's prep despite ~20x the bytes.
    out.push({
      target: "lazy warm prepMs independent of image size (large within 25% or 10 ms of small)",
      subject: `${runtime}/lazy warm, small vs large`,
      value: large && small ? `${formatMs(small.prepMs)} ms vs ${formatMs(large.prepMs)} ms` : "not measured",
      met: large && small ? Math.abs(large.prepMs - small.prepMs) <= Math.max(10, 0.25 * small.prepMs) : null,
    });
    // Not on busybox: its whole block image is two chunks, so no percentage of it can be small.
    const measured = rows.filter(
      (r) => r.runtime === runtime && r.rootfs === "lazy" && r.bindMounts === 0 && r.image !== "busybox",
    );
    for (const r of measured) {
      if (r.cache === "cold") {
        out.push({
          target: "lazy cold run of a shell command fetches < 10% of the block image",
          subject: `${runtime}/lazy ${r.image} cold`,
          value: `${formatBytes(r.fetchedBytes)} of ${formatBytes(r.blockSize)} = ${formatPercent(r.fetchedBytes, r.blockSize)}`,
          met: r.fetchedBytes < 0.1 * r.blockSize,
        });
      }
      out.push({
        target: "per-container diskBytes < 1% of the image (lazy)",
        subject: `${runtime}/lazy ${r.image} ${r.cache}`,
        value: `${formatBytes(r.diskBytes)} of ${formatBytes(r.blockSize)} = ${formatPercent(r.diskBytes, r.blockSize)}`,
        met: r.diskBytes < 0.01 * r.blockSize,
      });
    }
  }
  for (const squash of rows.filter(
    (r) => r.rootfs === "squashfs" && r.image === "large" && r.bindMounts === 0 && r.cache === "warm",
  )) {
    // Against the same runtime's lazy strategy if it was measured, else runc's.
    const q = { ...base, rootfs: "lazy", image: "large", cache: "warm" as const };
    const lazy = find(rows, { ...q, runtime: squash.runtime }) ?? find(rows, { ...q, runtime: "runc" });
    out.push({
      target: "lazy warm prepMs >= 50x below squashfs on the same image",
      subject: `${squash.runtime}/squashfs vs ${lazy?.runtime ?? "?"}/lazy, large warm`,
      value: lazy
        ? `${formatMs(squash.prepMs)} / ${formatMs(lazy.prepMs)} ms = ${(squash.prepMs / lazy.prepMs).toFixed(0)}x`
        : "lazy not measured",
      met: lazy ? squash.prepMs / lazy.prepMs >= 50 : null,
    });
  }
  for (const dir of rows.filter((r) => r.rootfs === "dir" && r.bindMounts === 0)) {
    const lazy = find(rows, { ...base, runtime: "runc", rootfs: "lazy", image: dir.image, cache: "warm" });
    if (!lazy) continue;
    out.push({
      target: "runc on a warm lazy image within 1.5x of runc on a plain directory (totalMs)",
      subject: `runc/lazy vs runc/dir, ${dir.image} warm`,
      value: `${formatMs(lazy.totalMs)} / ${formatMs(dir.totalMs)} ms = ${(lazy.totalMs / dir.totalMs).toFixed(2)}x`,
      met: lazy.totalMs / dir.totalMs <= 1.5,
    });
    out.push({
      target: "(same, process start only: firstOutputMs - prepMs)",
      subject: `runc/lazy vs runc/dir, ${dir.image} warm`,
      value: `${formatMs(lazy.firstOutputMs - lazy.prepMs)} / ${formatMs(dir.firstOutputMs - dir.prepMs)} ms = ${((lazy.firstOutputMs - lazy.prepMs) / (dir.firstOutputMs - dir.prepMs)).toFixed(2)}x`,
      met: (lazy.firstOutputMs - lazy.prepMs) / (dir.firstOutputMs - dir.prepMs) <= 1.5,
    });
  }
  return out;
}

export function targetsTable(results: TargetResult[]): string {
  return table(
    ["target", "measured on", "value", "result"],
    results.map((t) => [
      t.target,
      t.subject,
      t.value,
      t.met === null ? "not measured" : t.met ? "met" : "MISSED",
    ]),
  );
}

export function formatTargets(results: TargetResult[]): string {
  return results.length === 0 ? "(no rows to check the targets on)" : targetsTable(results);
}
