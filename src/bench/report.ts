/** Markdown tables and dependency-free SVG charts (readable in any browser and on GitHub). */
import type { BenchRow } from "./rows.js";

export const COLUMNS: (keyof BenchRow)[] = [
  "runtime",
  "rootfs",
  "image",
  "bindMounts",
  "cache",
  "prepMs",
  "firstOutputMs",
  "totalMs",
  "fetchedBytes",
  "ttfbMs",
  "fetchMBps",
  "blockSize",
  "diskBytes",
];

function cell(value: unknown): string {
  if (value === undefined) return "-";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(1);
  return String(value);
}

/** Every column, raw numbers: the table `--json` holds too. */
export function markdownTable(rows: BenchRow[]): string {
  return table(
    COLUMNS,
    rows.map((row) => COLUMNS.map((c) => cell(row[c]))),
  );
}

/** A Markdown table from a header and rows of cells. */
export function table(header: string[], rows: string[][]): string {
  const lines = [`| ${header.join(" | ")} |`, `|${header.map(() => "---").join("|")}|`];
  for (const r of rows) lines.push(`| ${r.join(" | ")} |`);
  return lines.join("\n");
}

export interface Bar {
  label: string;
  values: { name: string; value: number }[];
}

const PALETTE = [
  "#4e79a7",
  "#f28e2b",
  "#59a14f",
  "#e15759",
  "#76b7b2",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#17becf",
  "#000000",
  "#8c564b",
];

/** Where v falls on [0, plotW]: linear from 0, or log10 from `min` (values span orders of magnitude). */
function scaler(values: number[], plotW: number, log: boolean): (v: number) => number {
  const max = Math.max(1, ...values);
  if (!log) return (v) => (v / max) * plotW;
  const lo = Math.log10(Math.max(0.1, Math.min(...values.filter((v) => v > 0)) / 2));
  const hi = Math.log10(max * 1.2);
  return (v) => (v <= 0 ? 0 : ((Math.log10(v) - lo) / (hi - lo)) * plotW);
}

/** A grouped horizontal bar chart as a standalone SVG; `log` uses a log10 axis. */
export function barChartSvg(title: string, unit: string, bars: Bar[], log = false, note = ""): string {
  const series = [...new Set(bars.flatMap((b) => b.values.map((v) => v.name)))];
  const all = bars.flatMap((b) => b.values.map((v) => v.value));
  const barH = 14;
  const groupH = series.length * barH + 10;
  const left = 230;
  const width = 820;
  const plotW = width - left - 110;
  const x = scaler(all, plotW, log);
  const top = note ? 56 : 40;
  const height = top + 10 + bars.length * groupH + 20 * series.length;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="20" font-size="14" font-weight="bold">${escapeXml(title)}${log ? " (log scale)" : ""}</text>`,
  ];
  if (note) out.push(`<text x="10" y="38" fill="#555">${escapeXml(note)}</text>`);
  bars.forEach((bar, i) => {
    const y0 = top + i * groupH;
    out.push(`<text x="${left - 6}" y="${y0 + groupH / 2}" text-anchor="end">${escapeXml(bar.label)}</text>`);
    for (const v of bar.values) {
      const s = series.indexOf(v.name);
      const w = Math.max(1, x(v.value));
      const y = y0 + s * barH;
      out.push(
        `<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barH - 2}" fill="${PALETTE[s % PALETTE.length]}"/>`,
      );
      out.push(`<text x="${left + w + 4}" y="${y + barH - 4}">${escapeXml(fmt(v.value))} ${unit}</text>`);
    }
  });
  legend(out, series, left, top + bars.length * groupH + 8);
  out.push("</svg>");
  return out.join("\n");
}

export interface Series {
  name: string;
  points: { x: number; y: number; label?: string }[];
}

/** A log-log line chart (x: e.g. image bytes, y: ms) as a standalone SVG. */
export function lineChartSvg(
  title: string,
  xUnit: string,
  yUnit: string,
  series: Series[],
  note = "",
): string {
  const width = 900;
  const height = 480 + 18 * series.length;
  const left = 70;
  const top = note ? 56 : 40;
  const plotW = width - left - 260;
  const plotH = 360;
  const xs = series.flatMap((s) => s.points.map((p) => p.x)).filter((v) => v > 0);
  const ys = series.flatMap((s) => s.points.map((p) => p.y)).filter((v) => v > 0);
  const decade = (vs: number[], up: boolean) =>
    vs.length === 0
      ? up
        ? 1
        : 0
      : up
        ? Math.ceil(Math.log10(Math.max(...vs)))
        : Math.floor(Math.log10(Math.min(...vs)));
  const [x0, x1] = [decade(xs, false), Math.max(decade(xs, true), decade(xs, false) + 1)];
  const [y0, y1] = [decade(ys, false), Math.max(decade(ys, true), decade(ys, false) + 1)];
  const px = (v: number) => left + ((Math.log10(v) - x0) / (x1 - x0)) * plotW;
  const py = (v: number) => top + plotH - ((Math.log10(v) - y0) / (y1 - y0)) * plotH;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="20" font-size="14" font-weight="bold">${escapeXml(title)} (log-log)</text>`,
  ];
  if (note) out.push(`<text x="10" y="38" fill="#555">${escapeXml(note)}</text>`);
  for (let d = x0; d <= x1; d++) {
    const X = px(10 ** d);
    out.push(`<line x1="${X}" y1="${top}" x2="${X}" y2="${top + plotH}" stroke="#ddd"/>`);
    out.push(`<text x="${X}" y="${top + plotH + 14}" text-anchor="middle">${escapeXml(fmt(10 ** d))}</text>`);
  }
  for (let d = y0; d <= y1; d++) {
    const Y = py(10 ** d);
    out.push(`<line x1="${left}" y1="${Y}" x2="${left + plotW}" y2="${Y}" stroke="#ddd"/>`);
    out.push(`<text x="${left - 4}" y="${Y + 4}" text-anchor="end">${escapeXml(fmt(10 ** d))}</text>`);
  }
  out.push(
    `<text x="${left + plotW / 2}" y="${top + plotH + 30}" text-anchor="middle">${escapeXml(xUnit)}</text>`,
  );
  out.push(
    `<text x="12" y="${top + plotH / 2}" transform="rotate(-90 12 ${top + plotH / 2})">${escapeXml(yUnit)}</text>`,
  );
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const pts = s.points.filter((p) => p.x > 0 && p.y > 0).sort((a, b) => a.x - b.x);
    if (pts.length > 1) {
      const d = pts.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(" ");
      out.push(`<polyline points="${d}" fill="none" stroke="${color}" stroke-width="2"/>`);
    }
    for (const p of pts) {
      out.push(`<circle cx="${px(p.x).toFixed(1)}" cy="${py(p.y).toFixed(1)}" r="3.5" fill="${color}"/>`);
    }
    // Only the last point is labelled (with the series name): readable when lines run close.
    const last = pts.at(-1);
    if (last) {
      out.push(
        `<text x="${(px(last.x) + 6).toFixed(1)}" y="${(py(last.y) + 4).toFixed(1)}" fill="${color}">${escapeXml(`${fmt(last.y)} ${s.name}`)}</text>`,
      );
    }
  });
  legend(
    out,
    series.map((s) => s.name),
    left,
    top + plotH + 44,
  );
  out.push("</svg>");
  return out.join("\n");
}

function legend(out: string[], names: string[], x: number, y0: number): void {
  names.forEach((name, s) => {
    const y = y0 + s * 18;
    out.push(`<rect x="${x}" y="${y}" width="12" height="12" fill="${PALETTE[s % PALETTE.length]}"/>`);
    out.push(`<text x="${x + 18}" y="${y + 10}">${escapeXml(name)}</text>`);
  });
}

/** 3 significant figures, with k/M/G for large values. */
function fmt(v: number): string {
  const units: [number, string][] = [
    [1e9, "G"],
    [1e6, "M"],
    [1e3, "k"],
  ];
  for (const [scale, suffix] of units)
    if (v >= scale) return `${Number((v / scale).toPrecision(3))}${suffix}`;
  return String(Number(v.toPrecision(3)));
}

function escapeXml(s: string): string {
  return s.replace(/[<>&"]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;" })[c]!);
}
