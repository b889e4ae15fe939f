/**
 * Spawning the lazy daemon's process, and its early start (`image pull` starts it before it knows
 * its image). Apart from client.ts so the pull's CLI can start it before it loads anything else.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { constants, existsSync } from "node:fs";
import { access, mkdir, open, rm } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { debug } from "../util/debug.js";
import { errorMessage } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { DaemonDir } from "./daemondir.js";
import { AWAIT_DIR } from "./types.js";

/**
 * The daemon's entry: one esbuild bundle when the build made it (package.json `bundle-daemon`: one
 * file to load at each start instead of ~60 modules; bench/coldstart.ts), else as compiled.
 */
const DAEMON_BUNDLE = fileURLToPath(new URL("./daemon.bundle.js", import.meta.url));
export const DAEMON_JS = existsSync(DAEMON_BUNDLE)
  ? DAEMON_BUNDLE
  : fileURLToPath(new URL("./daemon.js", import.meta.url));

/**
 * A lazy daemon process started before its image is known: `image pull` starts one before its
 * fetches, so the daemon's Node start and module load overlap them. It logs to
 * mnt/.new-<pid>-<id>/daemon.log and waits for this process's IPC channel to close (we hand it
 * over, exit or die); then it serves mnt/<id> if startSharedInBackground made it, else it exits.
 * A cleanup removes the half-made directory of a dead starter.
 */
export interface EarlyDaemon {
  readonly id: string;
  readonly child: ChildProcess;
  /** Ends it (it was not needed) and removes its directory. Safe to call twice, or after use. */
  cancel(): Promise<void>;
}

export async function startEarlyDaemon(home: KindlingHome): Promise<EarlyDaemon> {
  await mkdir(home.blobs, { recursive: true });
  const reserved = await DaemonDir.reserve(home);
  let child: ChildProcess;
  try {
    const logFd = await open(path.join(reserved.path, "daemon.log"), "a");
    try {
      // Its directory-to-be on its command line: `ps` (and a leak check) sees whose it is.
      child = spawnDaemon([AWAIT_DIR, new DaemonDir(home, reserved.id).path], logFd.fd, true);
    } finally {
      await logFd.close();
    }
  } catch (err) {
    await rm(reserved.path, { recursive: true, force: true });
    throw err;
  }
  let used = false;
  const early = {
    id: reserved.id,
    child,
    /** Called once the directory is renamed into place: cancel then leaves the daemon alone. */
    use: () => {
      used = true;
    },
    async cancel(): Promise<void> {
      if (used) return;
      used = true;
      child.kill("SIGKILL");
      if (child.connected) child.disconnect();
      await rm(reserved.path, { recursive: true, force: true });
    },
  };
  earlyUses.set(early, early.use);
  return early;
}

/** The `use` of each early daemon (not part of the interface its holder sees). */
const earlyUses = new WeakMap<EarlyDaemon, () => void>();

/** Its directory is in place (client.ts startDaemon): cancel() then leaves the daemon alone. */
export function markEarlyUsed(early: EarlyDaemon): void {
  earlyUses.get(early)?.();
}

/** Spawns a daemon process (`args`: its directory, or AWAIT_DIR and it) with an IPC channel that keeps neither side alive. */
export function spawnDaemon(args: string[], logFd: number, detached: boolean): ChildProcess {
  const child = spawn(process.execPath, [DAEMON_JS, ...args], {
    stdio: ["ignore", logFd, logFd, "ipc"],
    serialization: "advanced",
    detached,
  });
  // Neither the daemon nor its channel keeps this process alive; an attached daemon exits with us.
  child.unref();
  child.channel?.unref();
  return child;
}

/** An early start where lazy runs can happen (FUSE); none, never an error, where they cannot. */
export async function startEarlyIfLazy(home: KindlingHome): Promise<EarlyDaemon | undefined> {
  try {
    await access("/dev/fuse", constants.R_OK | constants.W_OK); // else no lazy runs here anyway
    return await startEarlyDaemon(home);
  } catch (err) {
    debug(`not starting a lazy daemon early: ${errorMessage(err)}`);
    return undefined;
  }
}
