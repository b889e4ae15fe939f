import { randomBytes } from "node:crypto";
import { mkdir, readdir, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { isDeepStrictEqual } from "node:util";
import { isSameProcess, processStartTime } from "../host/process.js";
import type { KindlingHome } from "../util/home.js";
import { DaemonDir } from "./daemondir.js";
import type { DaemonState, FetchPolicy } from "./types.js";

/**
 * A shared daemon serves one image to any number of users (processes), so only the first open
 * pays for starting a daemon. Each user holds a token file mnt/<id>/users/<pid>-<start>-<rand>;
 * the daemon drops tokens of dead users and, after `idleMs` without any, marks itself `stopping`,
 * looks once more, and exits. An opener writes its token first and checks `stopping` second, so
 * either the daemon sees the token or the opener sees the mark (then it starts a new daemon).
 * A container that outlives its CLI (killed with SIGKILL) holds a token of its own process.
 */
export async function addUser(dir: DaemonDir, pid = process.pid): Promise<string> {
  await mkdir(dir.usersDir, { recursive: true });
  const start = processStartTime(pid) ?? 0;
  const token = path.join(dir.usersDir, `${pid}-${start}-${randomBytes(4).toString("hex")}`);
  await writeFile(token, "");
  return token;
}

/** Live users; tokens of processes that are gone are removed. */
export async function liveUsers(dir: DaemonDir): Promise<number> {
  let live = 0;
  for (const name of await readdir(dir.usersDir).catch(() => [] as string[])) {
    const [pid, start] = name.split("-");
    if (isSameProcess(Number(pid), Number(start))) live++;
    else await rm(path.join(dir.usersDir, name), { force: true });
  }
  return live;
}

export async function isStopping(dir: DaemonDir): Promise<boolean> {
  return stat(dir.stoppingMark).then(
    () => true,
    () => false,
  );
}

/** Called by an idle daemon: true if it may exit (no user appeared after it marked itself). */
export async function markStopping(dir: DaemonDir): Promise<boolean> {
  await writeFile(dir.stoppingMark, "");
  if ((await liveUsers(dir)) === 0) return true;
  await rm(dir.stoppingMark, { force: true });
  return false;
}

/** Every daemon directory of this home with its state; one still starting (no state yet) is skipped. */
async function daemonStates(home: KindlingHome): Promise<{ dir: DaemonDir; state: DaemonState }[]> {
  const out: { dir: DaemonDir; state: DaemonState }[] = [];
  for (const dir of await DaemonDir.all(home)) {
    const state = await dir.readState();
    if (state) out.push({ dir, state });
  }
  return out;
}

/**
 * A running shared daemon of this image in this home with these fetch bounds, or null. One asked
 * for `lower` must mount the SquashFS; one that does serves the others too (the lazy file is the
 * same), so a daemon `image pull` started serves runc and VM runs alike.
 */
export async function findShared(
  home: KindlingHome,
  digest: string,
  policy: FetchPolicy,
  lower: boolean,
): Promise<{ dir: DaemonDir; state: DaemonState } | null> {
  for (const { dir, state } of await daemonStates(home)) {
    if (!state.shared || state.digest !== digest) continue;
    if (!isDeepStrictEqual(state.policy, policy) || (lower && !state.lower)) continue;
    if (isSameProcess(state.pid, state.startTime) && !(await isStopping(dir))) return { dir, state };
  }
  return null;
}

/**
 * Waits (at most `ms`) for the shared daemons of this home (of one image, if `digest`) that are
 * still starting (a config, no state yet, a live owner: a background start after `image pull`),
 * so a stop that follows does not miss them.
 */
export async function waitForStarting(
  home: KindlingHome,
  digest: string | undefined,
  ms: number,
): Promise<void> {
  const until = Date.now() + ms;
  for (const dir of await DaemonDir.all(home)) {
    const cfg = await dir.readConfig();
    if (!cfg?.shared || (digest && cfg.record.digest !== digest)) continue;
    while (Date.now() < until && !(await dir.readState())) {
      const owner = await dir.readConfig();
      if (!owner || !isSameProcess(owner.owner, owner.ownerStartTime || undefined)) break;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Shared daemons of this home (of one image, if `digest`), whether they run or not. */
export async function sharedDaemonDirs(home: KindlingHome, digest?: string): Promise<DaemonDir[]> {
  return (await daemonStates(home))
    .filter(({ state }) => state.shared && (!digest || state.digest === digest))
    .map(({ dir }) => dir);
}

/** Pids of the live daemons (shared or not) serving this image in this home. */
export async function liveDaemonPids(home: KindlingHome, digest: string): Promise<number[]> {
  const pids: number[] = [];
  for (const { state } of await daemonStates(home)) {
    if (state.digest === digest && isSameProcess(state.pid, state.startTime)) pids.push(state.pid);
  }
  return pids;
}
