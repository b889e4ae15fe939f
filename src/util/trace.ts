// Step timestamps for measuring where a run's time goes (KINDLING_TRACE=FILE): each process of a
// run (the CLI, the service for its request, the container's supervisor) appends
// "<epoch ms> <who> <step>" lines to one file, so bench/cli-cost.ts can line them up across
// processes. The process that pins its configuration switches it on (traceTo); library code only
// calls trace(). Off, a step costs one comparison.
import { appendFileSync } from "node:fs";

let file: string | undefined;
let who = "";

const now = () => performance.timeOrigin + performance.now();

function append(to: string, name: string, epochMs: number, step: string): void {
  try {
    appendFileSync(to, `${epochMs.toFixed(2)} ${name}:${process.pid} ${step}\n`);
  } catch {
    // a trace must never fail a run
  }
}

/** Starts (or, with undefined, stops) tracing this process to `path`, named `name`. */
export function traceTo(path: string | undefined, name: string): void {
  file = path;
  who = name;
}

/** Appends one step, timestamped now (ms since the epoch, with fractions). */
export function trace(step: string): void {
  if (file !== undefined) append(file, who, now(), step);
}

/** Appends one step that happened at `epochMs` (e.g. the process's own start). */
export function traceAt(epochMs: number, step: string): void {
  if (file !== undefined) append(file, who, epochMs, step);
}

/** A tracer for one request's steps (a service serves many runs, each with its own trace file). */
export function tracer(path: string | undefined, name: string): (step: string, atEpochMs?: number) => void {
  if (path === undefined) return () => {};
  return (step, at) => append(path, name, at ?? now(), step);
}

/** Now, as trace timestamps are (to trace a step later, once the file is known). */
export const traceNow = now;
