/** Number formatting shared by the tables and charts. */

export function formatBytes(n: number | undefined): string {
  if (n === undefined || Number.isNaN(n)) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${Math.round(v)} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

export function formatMs(n: number | undefined): string {
  if (n === undefined || Number.isNaN(n)) return "-";
  return n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : String(Math.round(n));
}

export function formatPercent(part: number, whole: number): string {
  if (!whole || Number.isNaN(part)) return "-";
  const p = (100 * part) / whole;
  return `${p < 1 ? p.toFixed(3) : p.toFixed(1)}%`;
}
