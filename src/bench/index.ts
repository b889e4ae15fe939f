/** `kindling bench`'s building blocks, for the standalone scripts in bench/. */

export { markdownTable, table } from "./report.js";
export { type BenchRow, median, medianRow } from "./rows.js";
