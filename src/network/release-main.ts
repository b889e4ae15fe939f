/**
 * The process a run's network teardown is handed to (teardown.ts): releases what the run's host record
 * names (CNI DEL, then the namespace) and drops the record; on a failure the record stays for the sweep.
 *   node release-main.js <netns name>
 */
import { setTimeout as sleep } from "node:timers/promises";
import { type RunRecord, readRunRecord } from "./owners.js";
import { releaseRun, type SweepReport } from "./sweep.js";

const netnsName = process.argv[2];
if (netnsName && /^kl-[0-9a-f]{8}-[A-Za-z0-9_.-]+$/.test(netnsName)) {
  // first the record must name us (the run writes it once we started): else its later write could
  // bring back a record we already dropped; bounded, in case the run died before writing it
  let rec: RunRecord | undefined;
  for (let i = 0; i < 200; i++) {
    rec = await readRunRecord(netnsName);
    if (!rec || rec.pid === process.pid) break;
    await sleep(10);
  }
  const report: SweepReport = { released: [], errors: [] };
  if (rec) await releaseRun(netnsName, rec, report);
  process.exitCode = report.errors.length > 0 ? 1 : 0;
}
