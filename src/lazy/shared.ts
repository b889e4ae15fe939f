import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { isDeepStrictEqual } from "node:util";
import type { KindlingHome } from "../util/home.js";
import { isSameProcess, processStartTime } from "../util/proc.js";
import type { DaemonState, FetchPolicy } from "./types.js";

/**
 * A shared daemon serves one image to any number of users (processes), so only the first open
 * pays for starting a daemon. Each user holds a token file mnt/<id>/users/<pid>-<start>-<rand>;
 * the daemon drops tokens of dead users and, after `idleMs` without any, marks itself `stopping`,
 * looks once more, and exits. An opener writes its token first and checks `stopping` second, so
 * either the daemon sees the token or the opener sees the mark (then it starts a new daemon).
 */
const usersDir = (dir: string) => path.join(dir, "users");
const stoppingMark = (dir: string) => path.join(dir, "stopping");

export async function addUser(dir: string): Promise<string> {
  await mkdir(usersDir(dir), { recursive: true });
  const start = (await processStartTime(process.pid)) ?? "0";
  const token = path.join(usersDir(dir), `${process.pid}-${start}-${randomBytes(4).toString("hex")}`);
  await writeFile(token, "");
  return token;
}

/** Live users; tokens of processes that are gone are removed. */
export async function liveUsers(dir: string): Promise<number> {
  let live = 0;
  for (const name of await readdir(usersDir(dir)).catch(() => [] as string[])) {
    const [pid, start] = name.split("-");
    if (await isSameProcess(Number(pid), start)) live++;
    else await rm(path.join(usersDir(dir), name), { force: true });
  }
  return live;
}

export async function isStopping(dir: string): Promise<boolean> {
  return stat(stoppingMark(dir)).then(
    () => true,
    () => false,
  );
}

/** Called by an idle daemon: true if it may exit (no user appeared after it marked itself). */
export async function markStopping(dir: string): Promise<boolean> {
  await writeFile(stoppingMark(dir), "");
  if ((await liveUsers(dir)) === 0) return true;
  await rm(stoppingMark(dir), { force: true });
  return false;
}

/** Every daemon directory of this home with its state; one still starting (no state yet) is skipped. */
async function daemonStates(home: KindlingHome): Promise<{ dir: string; state: DaemonState }[]> {
  const out: { dir: string; state: DaemonState }[] = [];
  for (const id of await readdir(home.mounts).catch(() => [] as string[])) {
    if (!/^[0-9a-f]{16}$/.test(id)) continue;
    const dir = path.join(home.mounts, id);
    try {
      out.push({
        dir,
        state: JSON.parse(await readFile(path.join(dir, "state.json"), "utf8")) as DaemonState,
      });
    } catch {
      // starting, or not a daemon directory
    }
  }
  return out;
}

/** A running shared daemon of this image in this home with these fetch bounds and `lower`, or null. */
export async function findShared(
  home: KindlingHome,
  digest: string,
  policy: FetchPolicy,
  lower: boolean,
): Promise<{ dir: string; state: DaemonState } | null> {
  for (const { dir, state } of await daemonStates(home)) {
    if (!state.shared || state.digest !== digest) continue;
    if (!isDeepStrictEqual(state.policy, policy) || Boolean(state.lower) !== lower) continue;
    if ((await isSameProcess(state.pid, state.startTime)) && !(await isStopping(dir))) return { dir, state };
  }
  return null;
}

/** Shared daemons of this home (of one image, if `digest`), whether they run or not. */
export async function sharedDaemonDirs(home: KindlingHome, digest?: string): Promise<string[]> {
  return (await daemonStates(home))
    .filter(({ state }) => state.shared && (!digest || state.digest === digest))
    .map(({ dir }) => dir);
}

/** Pids of the live daemons (shared or not) serving this image in this home. */
export async function liveDaemonPids(home: KindlingHome, digest: string): Promise<number[]> {
  const pids: number[] = [];
  for (const { state } of await daemonStates(home)) {
    if (state.digest === digest && (await isSameProcess(state.pid, state.startTime))) pids.push(state.pid);
  }
  return pids;
}
