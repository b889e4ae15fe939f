import { rm, stat } from "node:fs/promises";
import path from "node:path";
import { mountAt, readMountinfo, releaseFuseMount } from "../host/mounts.js";
import { isSameProcess, signalProcess, waitExit } from "../host/process.js";
import { removeChunkLeftovers } from "../store/chunkstore.js";
import type { KindlingHome } from "../util/home.js";
import { DaemonDir } from "./daemondir.js";
import { unmountLower } from "./lower.js";

/**
 * Stops a daemon and releases its FUSE mount and directory: TERM first; a daemon that does not
 * exit in time is stuck, so its connection is aborted (freeing its readers) and it is killed.
 */
export async function stopDaemon(home: KindlingHome, id: string, graceMs = 5000): Promise<void> {
  const dir = new DaemonDir(home, id);
  const state = await dir.readState();
  if (state && isSameProcess(state.pid, state.startTime)) {
    signalProcess(state.pid, "SIGTERM");
    if (!(await waitExit(state.pid, graceMs, state.startTime))) {
      await releaseFuseMount(dir.mountpoint);
      signalProcess(state.pid, "SIGKILL");
      await waitExit(state.pid, 2000, state.startTime);
    }
  }
  // A daemon that died leaves its SquashFS mounts (lower.ts) on top of the dead FUSE file.
  for (const lower of await dir.lowers()) await unmountLower(lower);
  await releaseFuseMount(dir.mountpoint);
  if (!(await mountAt(dir.mountpoint))) await rm(dir.path, { recursive: true, force: true });
}

/**
 * Whether the daemon in mnt/<id> is gone, or stuck, and its leftovers can go. Decided from /proc
 * alone: a stat of the mountpoint would block forever if a live daemon were stuck.
 */
async function isStale(dir: DaemonDir): Promise<boolean> {
  const state = await dir.readState();
  if (!state) {
    // Still starting? Give a daemon whose owner lives a minute to write its state. (A directory
    // appears with its config: one without is not ours, or was half removed.)
    const cfg = await dir.readConfig();
    const ownerLives = cfg !== null && isSameProcess(cfg.owner, cfg.ownerStartTime || undefined);
    const age =
      Date.now() -
      (await stat(dir.path)
        .then((s) => s.mtimeMs)
        .catch(() => 0));
    return !(ownerLives && age < 60_000);
  }
  if (!isSameProcess(state.pid, state.startTime)) return true;
  // An attached daemon leaves when its owner's IPC channel closes; one still here after its owner
  // died is stuck (its event loop never saw the channel close). It gets stopped, and aborted.
  return !state.detached && !isSameProcess(state.owner, state.ownerStartTime || undefined);
}

/**
 * Releases lazy daemons' leftovers in this home whose processes are gone: FUSE mounts (aborted,
 * then detached), their directories, directories their creator left half made. Returns what it
 * released, for messages. Safe while other processes start daemons: each directory is judged
 * on its own state at the time, never on an earlier listing.
 */
export async function cleanupStaleDaemons(home: KindlingHome): Promise<string[]> {
  const released = await DaemonDir.removeAbandoned(home);
  for (const dir of await DaemonDir.all(home)) {
    if (!(await isStale(dir))) continue;
    const state = await dir.readState();
    await stopDaemon(home, dir.id, 1000);
    if (state) await removeChunkLeftovers(home, state.pid);
    released.push(dir.path);
  }
  // FUSE mounts of ours that no live daemon claims (their bookkeeping is gone).
  const prefix = `${home.mounts}${path.sep}`;
  for (const m of await readMountinfo()) {
    if (m.fsType !== "fuse.kindling" || !m.mountPoint.startsWith(prefix)) continue;
    const id = m.mountPoint.slice(prefix.length).split(path.sep)[0];
    // A daemon started since the listing above has its directory: judge it now.
    if (DaemonDir.isId(id) && !(await isStale(new DaemonDir(home, id)))) continue;
    await releaseFuseMount(m.mountPoint);
    released.push(m.mountPoint);
  }
  return released;
}
