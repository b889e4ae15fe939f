/**
 * Taking a run's network teardown (CNI DEL, the namespace's removal) off the path that reports its exit
 * status: an attached run's supervisor (src/service/shim.ts: `kindling run` without -d) sends the status
 * once the run is released, and hands the teardown to a process of its own (release-main.ts), which becomes
 * the owner of the run's host record (owners.ts) before the supervisor exits: no sweep takes the record
 * from a live owner, and if that process dies the sweep releases what it left (its owner is dead and the
 * run's directory is gone). Off by default: in-process callers (tests, benchmarks) release inline, so
 * "after the run, nothing is left" holds there.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

let background = false;

/** Set by an attached run's supervisor. */
export function teardownInBackground(on: boolean): void {
  background = on;
}

export function inBackground(): boolean {
  return background;
}

const HELPER = fileURLToPath(new URL("./release-main.js", import.meta.url));

/** Starts the process that releases `netnsName`'s record; its pid, or undefined if it could not start. */
export function startReleaseProcess(netnsName: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [HELPER, netnsName], { detached: true, stdio: "ignore" });
    child.once("error", () => resolve(undefined));
    child.once("spawn", () => {
      child.unref();
      resolve(child.pid);
    });
  });
}
