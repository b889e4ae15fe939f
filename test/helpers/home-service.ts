/**
 * The service a CLI started for a home (`kindling run` starts one when none answers): found by the
 * pid file it writes, stopped with SIGTERM (its containers keep running under their supervisors;
 * it releases the images it keeps warm and its spare supervisor), bounded.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Services a test started itself (test/helpers/service.ts startService): it stops them. */
const startedByTests = new Set<number>();
export function serviceOfTest(pid: number): void {
  startedByTests.add(pid);
}

/**
 * Stops the home's service if one runs (not one a test started, unless `force`); resolves once it
 * exited (SIGKILL after 15 s).
 */
export async function stopHomeService(home: string, force = false): Promise<void> {
  const pid = Number((await readFile(path.join(home, "kindling.pid"), "utf8").catch(() => "")).trim());
  if (!(pid > 0) || !alive(pid) || (startedByTests.has(pid) && !force)) return;
  process.kill(pid, "SIGTERM");
  const deadline = Date.now() + 15_000;
  while (alive(pid) && Date.now() < deadline) await sleep(25);
  if (alive(pid)) process.kill(pid, "SIGKILL");
}

/** The command-line mark of the home's spare supervisor (it exits once its modules are loaded). */
export const spareMarker = (home: string) => `--spare\0${path.join(home, "containers")}/`;

/** Waits (bounded, 10 s) until the home's spare supervisor has gone. */
export async function spareGone(home: string): Promise<void> {
  const { pidsNaming } = await import("./leftovers.js");
  for (let i = 0; i < 400 && (await pidsNaming(spareMarker(home))).length > 0; i++) await sleep(25);
}

/**
 * Kills (SIGKILL) the owner of the home's one run (its run dir's owner.json): since `kindling run`
 * runs under the service, that is the container's supervisor, not the CLI. Resolves with the run's
 * id once the owner is gone; the attached CLI then ends on its own (125: its supervisor went away).
 */
export async function killRunOwner(runs: string): Promise<string> {
  const { readdir } = await import("node:fs/promises");
  const { readOwner } = await import("../../src/runtime/rundir.js");
  const [id] = await readdir(runs);
  if (!id) throw new Error(`no run under ${runs}`);
  const owner = await readOwner(path.join(runs, id));
  if (!owner) throw new Error(`run ${id} has no owner.json`);
  process.kill(owner.pid, "SIGKILL");
  for (let i = 0; i < 200 && alive(owner.pid); i++) await sleep(25);
  return id;
}
