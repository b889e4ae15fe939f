/** The bench's report: host-side and end-to-end tables apart, and bench.md for --out. */
import { BIND_BYTES, describeBinds } from "./binds.js";
import { formatBytes, formatMs, formatPercent } from "./format.js";
import { IMAGES } from "./images.js";
import { describeMachine, type MachineInfo } from "./machine.js";
import { networkTable } from "./network.js";
import { markdownTable, table } from "./report.js";
import type { BenchRow } from "./rows.js";
import type { BenchResult } from "./runner.js";
import { BENCH_COMMAND } from "./runner.js";
import { formatTargets, type TargetResult } from "./targets.js";

const key = (r: BenchRow) => [r.runtime, r.rootfs, r.image, String(r.bindMounts), r.cache];
const KEY_HEADER = ["runtime", "rootfs", "image", "bindMounts", "cache"];

/** What the host does and keeps per container: unaffected by the guest's emulation. */
export function hostSideTable(rows: BenchRow[]): string {
  return table(
    [
      ...KEY_HEADER,
      "prepMs",
      "fetchedBytes",
      "fetched/image",
      "ttfbMs",
      "fetch MB/s",
      "blockSize",
      "diskBytes",
      "disk/image",
    ],
    rows.map((r) => [
      ...key(r),
      formatMs(r.prepMs),
      formatBytes(r.fetchedBytes),
      formatPercent(r.fetchedBytes, r.blockSize),
      formatMs(r.ttfbMs),
      r.fetchMBps === undefined ? "-" : r.fetchMBps.toFixed(1),
      formatBytes(r.blockSize),
      formatBytes(r.diskBytes),
      formatPercent(r.diskBytes, r.blockSize),
    ]),
  );
}

/** Wall-clock times of whole runs; for VMs under TCG, mostly the guest's boot. */
export function timingTable(rows: BenchRow[]): string {
  return table(
    [...KEY_HEADER, "prepMs", "firstOutputMs", "totalMs", "bootMs", "reps"],
    rows.map((r) => [
      ...key(r),
      formatMs(r.prepMs),
      formatMs(r.firstOutputMs),
      formatMs(r.totalMs),
      formatMs(r.bootMs),
      String(r.reps ?? 1),
    ]),
  );
}

export interface BenchReport {
  command: string;
  machine: MachineInfo;
  result: BenchResult;
  targets: TargetResult[];
  reps: number;
}

export function benchMarkdown(rep: BenchReport): string {
  const images = [...new Set(rep.result.rows.map((r) => r.image))];
  const binds = [...new Set(rep.result.rows.map((r) => r.bindMounts))];
  return [
    "# kindling bench",
    "",
    `- Command: \`${rep.command}\``,
    `- Machine: ${describeMachine(rep.machine)}; VMs under QEMU TCG (software emulation).`,
    `- Each run: \`${BENCH_COMMAND.join(" ")}\`, median of ${rep.reps} interleaved repetitions.`,
    `- Images: ${images.map((i) => `${i} (${IMAGES[i]?.description ?? "?"}; block image ${formatBytes(rep.result.rows.find((r) => r.image === i)?.blockSize)})`).join("; ")}.`,
    `- Bind mounts: ${binds.map(describeBinds).join("; ")} (${BIND_BYTES >> 20} MiB of random bytes each, read-write).`,
    "- cold: a fresh KINDLING_HOME that pulled the index only from a registry on 127.0.0.1, so chunks are fetched during the run; warm: the second run in that home.",
    "",
    "## Host side (not affected by TCG)",
    "",
    hostSideTable(rep.result.rows),
    "",
    "## End to end",
    "",
    "Under QEMU TCG the guest's own boot dominates a VM's firstOutputMs and totalMs.",
    "",
    timingTable(rep.result.rows),
    "",
    "## All columns (raw)",
    "",
    markdownTable(rep.result.rows),
    "",
    "## Targets",
    "",
    formatTargets(rep.targets),
    "",
    ...(rep.result.network ? ["## Network", "", networkTable(rep.result.network), ""] : []),
    "## Skipped",
    "",
    ...(rep.result.skipped.length === 0
      ? ["Nothing."]
      : rep.result.skipped.map((s) => `- ${s.what}: ${s.reason.split("\n")[0]}`)),
    "",
    "![prep and first output](bench-times.svg)",
    "",
    "![prep against image size](bench-prep-vs-size.svg)",
    "",
  ].join("\n");
}
