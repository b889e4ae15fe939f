/**
 * A spare supervisor loads and rehearses at a low CPU priority, so it never takes CPU from the
 * containers starting meanwhile (on 2 cores, a Node process loading its modules competes with the
 * run that just took the previous spare); once handed a container it runs at the normal priority.
 * Linux nice values are per thread: every thread of the process is set (/proc/self/task).
 */
import { readdirSync } from "node:fs";
import { setPriority } from "node:os";

/** The nice value of an idle spare (0 is normal, 19 the lowest). */
export const SPARE_NICE = 10;

/** Sets the nice value of every thread of process `pid` (default: this one); best effort. */
export function setProcessNice(nice: number, pid = process.pid): void {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return; // gone
  }
  for (const tid of tids) {
    try {
      setPriority(Number(tid), nice);
    } catch {
      // exited meanwhile, or not allowed: a priority is only a hint
    }
  }
}
