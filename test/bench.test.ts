// `kindling bench` in its quickest form (one cheap variant: runc, busybox, warm, 1 repetition):
// the row shape and the JSON output, and that it leaves nothing behind. No timing is asserted.
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { after, before, test } from "node:test";
import { planUnits } from "../src/bench/plan.js";
import { type BenchRow, medianRow, variantKey } from "../src/bench/rows.js";
import { findBinary } from "../src/runtime/which.js";
import { runCli } from "./helpers/cli.js";
import { leftovers } from "./helpers/leftovers.js";

let work: string;

before(async () => {
  work = await mkdtemp("/tmp/kindling-bench-test-");
});
after(async () => {
  const left = await leftovers(work);
  const files = await readdir(work);
  await rm(work, { recursive: true, force: true });
  assert.deepEqual(left, []);
  assert.deepEqual(files, [], "the bench removes its homes, registry and bind-mount sources");
});

const ROW_TYPES: Record<string, string> = {
  runtime: "string",
  rootfs: "string",
  image: "string",
  bindMounts: "number",
  cache: "string",
  prepMs: "number",
  firstOutputMs: "number",
  totalMs: "number",
  fetchedBytes: "number",
  blockSize: "number",
  diskBytes: "number",
};

test("bench --json: one runc/lazy busybox warm row with every column", { timeout: 60_000 }, async (t) => {
  if (!(await findBinary("runc"))) return t.skip("runc is not installed");
  const filter = "^runc:lazy:busybox:0:warm$";
  const r = await runCli(["bench", "--json", "--reps", "1", "--filter", filter, "--work-dir", work], {
    timeoutMs: 55_000,
  });
  assert.equal(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout) as BenchRow[];
  assert.ok(Array.isArray(rows));
  assert.equal(rows.length, 1, r.stderr);
  const row = rows[0]!;
  for (const [key, type] of Object.entries(ROW_TYPES)) {
    assert.equal(typeof row[key as keyof BenchRow], type, `${key} is a ${type}`);
  }
  assert.equal(variantKey(row), "runc:lazy:busybox:0:warm");
  assert.equal(row.reps, 1);
  for (const key of ["prepMs", "firstOutputMs", "totalMs", "fetchedBytes", "diskBytes"] as const) {
    assert.ok(Number.isFinite(row[key]) && row[key] >= 0, `${key} = ${row[key]}`);
  }
  assert.ok(row.blockSize > 0);
  assert.equal(row.fetchedBytes, 0, "a warm run fetches nothing: the cold run before it did");
  assert.ok(row.firstOutputMs <= row.totalMs && row.prepMs <= row.firstOutputMs);
});

test("bench --json: a cold runc/lazy row has the fetch columns", { timeout: 120_000 }, async (t) => {
  if (!(await findBinary("runc"))) return t.skip("runc is not installed");
  const r = await runCli(
    [
      "bench",
      "--json",
      "--reps",
      "1",
      "--no-warmup",
      "--filter",
      "^runc:lazy:busybox:0:cold$",
      "--work-dir",
      work,
    ],
    { timeoutMs: 110_000 },
  );
  assert.equal(r.code, 0, r.stderr);
  const [row] = JSON.parse(r.stdout) as BenchRow[];
  assert.equal(variantKey(row!), "runc:lazy:busybox:0:cold");
  assert.ok(row!.fetchedBytes > 0, "a cold run fetches");
  assert.ok(
    Number.isFinite(row!.ttfbMs) && row!.ttfbMs! >= 0 && row!.ttfbMs! <= row!.totalMs,
    `ttfbMs ${row!.ttfbMs}`,
  );
  assert.ok(Number.isFinite(row!.fetchMBps) && row!.fetchMBps! > 0, `fetchMBps ${row!.fetchMBps}`);
});

test("the plan: --filter narrows, --quick is the small image, a directory has only warm", () => {
  const units = planUnits({ quick: false, filters: [/^runc:dir:/] });
  assert.ok(units.length > 0);
  assert.ok(units.every((u) => u.strategy.rootfs === "dir" && u.record.join() === "warm"));
  const quick = planUnits({ quick: true, filters: [] });
  assert.deepEqual([...new Set(quick.map((u) => u.image))], ["small"]);
  assert.deepEqual(planUnits({ quick: true, filters: [/^nothing$/] }), []);
});

test("medianRow takes each numeric column's median", () => {
  const base: BenchRow = {
    runtime: "runc",
    rootfs: "lazy",
    image: "small",
    bindMounts: 0,
    cache: "warm",
    prepMs: 1,
    firstOutputMs: 10,
    totalMs: 20,
    fetchedBytes: 0,
    blockSize: 100,
    diskBytes: 5,
  };
  const m = medianRow([base, { ...base, prepMs: 3, totalMs: 10 }, { ...base, prepMs: 2, totalMs: 30 }]);
  assert.equal(m.prepMs, 2);
  assert.equal(m.totalMs, 20);
  assert.equal(m.reps, 3);
  assert.equal(m.bootMs, undefined);
});
