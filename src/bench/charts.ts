/** The bench's two charts, from its median rows. */
import { formatBytes } from "./format.js";
import { type Bar, barChartSvg, lineChartSvg, type Series } from "./report.js";
import type { BenchRow } from "./rows.js";

const TCG_NOTE = "VM first-output times include the guest's boot under QEMU TCG (no usable KVM here)";

/** The largest image present (the chart shows one image, without bind mounts). */
function largestImage(rows: BenchRow[]): string | undefined {
  return [...rows].sort((a, b) => b.blockSize - a.blockSize)[0]?.image;
}

/** Prep and first-output time per strategy and cache state, for the largest image, no bind mounts. */
export function timesSvg(rows: BenchRow[]): string {
  const image = largestImage(rows);
  const bindMounts = Math.min(...rows.filter((r) => r.image === image).map((r) => r.bindMounts));
  const bars: Bar[] = rows
    .filter((r) => r.image === image && r.bindMounts === bindMounts)
    .map((r) => ({
      label: `${r.runtime}/${r.rootfs} ${r.cache}`,
      values: [
        { name: "prepMs (host-side rootfs preparation)", value: r.prepMs },
        { name: "firstOutputMs (run start to first byte of output)", value: r.firstOutputMs },
      ],
    }));
  const size = rows.find((r) => r.image === image)?.blockSize;
  return barChartSvg(
    `Prep and first-output time, image ${image} (${formatBytes(size)} block image), ${bindMounts} bind mounts`,
    "ms",
    bars,
    true,
    TCG_NOTE,
  );
}

/** prepMs against the image's block size, one line per strategy and cache state (no bind mounts). */
export function prepBySizeSvg(rows: BenchRow[]): string {
  const bySeries = new Map<string, Series>();
  const minBinds = Math.min(...rows.map((r) => r.bindMounts));
  // Warm only (the steady state a worker sees); cold adds the fetch, shown in the tables.
  for (const r of rows.filter((r) => r.bindMounts === minBinds && r.cache === "warm")) {
    const name = `${r.runtime}/${r.rootfs} ${r.cache}`;
    const s = bySeries.get(name) ?? { name, points: [] };
    s.points.push({ x: r.blockSize, y: Math.max(r.prepMs, 0.01), label: r.image });
    bySeries.set(name, s);
  }
  return lineChartSvg(
    `Host-side prep time against image size, warm (${minBinds} bind mounts)`,
    "block image size (bytes)",
    "prepMs",
    [...bySeries.values()],
    "Each point is the median of the repetitions; a flat line is a prep that does not depend on the image",
  );
}
