import { readdir, readFile, rm, stat } from "node:fs/promises";
import path from "node:path";
import type { KindlingHome } from "../util/home.js";
import { isSameProcess, signal, waitExit } from "../util/proc.js";
import { lowerDirOf, unmountLower } from "./lower.js";
import { mountAt, readMountinfo, releaseFuseMount } from "./mountinfo.js";
import type { DaemonConfig, DaemonState } from "./types.js";

async function readJson<T>(file: string): Promise<T | null> {
  try {
    return JSON.parse(await readFile(file, "utf8")) as T;
  } catch {
    return null;
  }
}

export const daemonDir = (home: KindlingHome, id: string) => path.join(home.mounts, id);
const isDaemonId = (name: string) => /^[0-9a-f]{16}$/.test(name);

/**
 * Stops a daemon and releases its FUSE mount and directory: TERM first; a daemon that does not
 * exit in time is stuck, so its connection is aborted (freeing its readers) and it is killed.
 */
export async function stopDaemon(home: KindlingHome, id: string, graceMs = 5000): Promise<void> {
  const dir = daemonDir(home, id);
  const state = await readJson<DaemonState>(path.join(dir, "state.json"));
  const mountpoint = path.join(dir, "fs");
  if (state && (await isSameProcess(state.pid, state.startTime))) {
    signal(state.pid, "SIGTERM");
    if (!(await waitExit(state.pid, graceMs, state.startTime))) {
      await releaseFuseMount(mountpoint);
      signal(state.pid, "SIGKILL");
      await waitExit(state.pid, 2000, state.startTime);
    }
  }
  // A daemon that died leaves its SquashFS mount (lower.ts) on top of the dead FUSE file.
  await unmountLower(lowerDirOf(dir));
  await releaseFuseMount(mountpoint);
  if (!(await mountAt(mountpoint))) await rm(dir, { recursive: true, force: true });
}

/** Half-written chunks (writeFileAtomic temp files) and fetch locks of a daemon that died. */
async function removeTempFiles(home: KindlingHome, pid: number): Promise<void> {
  const marker = `-${pid}-`;
  for (const name of await readdir(home.blobs).catch(() => [] as string[])) {
    const file = path.join(home.blobs, name);
    if (name.startsWith(".tmp-") && name.includes(marker)) await rm(file, { force: true });
    else if (name.startsWith(".fetch-")) {
      const holder = await readFile(file, "utf8").catch(() => "");
      if (holder.split(" ")[0] === String(pid)) await rm(file, { force: true });
    }
  }
}

/**
 * Whether the daemon in mnt/<id> is gone, or stuck, and its leftovers can go. Decided from /proc
 * alone: a stat of the mountpoint would block forever if a live daemon were stuck.
 */
async function isStale(home: KindlingHome, id: string): Promise<boolean> {
  const dir = daemonDir(home, id);
  const state = await readJson<DaemonState>(path.join(dir, "state.json"));
  if (!state) {
    // Still starting? Give a daemon whose owner lives a minute to write its state.
    const cfg = await readJson<DaemonConfig>(path.join(dir, "config.json"));
    const ownerLives = cfg !== null && (await isSameProcess(cfg.owner, cfg.ownerStartTime || undefined));
    const age =
      Date.now() -
      (await stat(dir)
        .then((s) => s.mtimeMs)
        .catch(() => 0));
    return !(ownerLives && age < 60_000);
  }
  if (!(await isSameProcess(state.pid, state.startTime))) return true;
  // An attached daemon leaves when its owner's IPC channel closes; one still here after its owner
  // died is stuck (its event loop never saw the channel close). It gets stopped, and aborted.
  return !state.detached && !(await isSameProcess(state.owner, state.ownerStartTime || undefined));
}

/**
 * Releases lazy daemons' leftovers in this home whose processes are gone: FUSE mounts (aborted,
 * then detached), their directories, and image mounts (squashfs mount, loop device). Returns what
 * it released, for messages.
 */
export async function cleanupStaleDaemons(home: KindlingHome): Promise<string[]> {
  const released: string[] = [];
  const ids = (await readdir(home.mounts).catch(() => [] as string[])).filter(isDaemonId);
  const live = new Set<string>();
  for (const id of ids) {
    if (!(await isStale(home, id))) {
      live.add(path.join(daemonDir(home, id), "fs"));
      continue;
    }
    const state = await readJson<DaemonState>(path.join(daemonDir(home, id), "state.json"));
    await stopDaemon(home, id, 1000);
    if (state) await removeTempFiles(home, state.pid);
    released.push(daemonDir(home, id));
  }
  // FUSE mounts of ours that no live daemon claims (their bookkeeping is gone).
  const prefix = `${home.mounts}${path.sep}`;
  for (const m of await readMountinfo()) {
    if (m.fstype !== "fuse.kindling" || !m.mountpoint.startsWith(prefix) || live.has(m.mountpoint)) continue;
    await releaseFuseMount(m.mountpoint);
    released.push(m.mountpoint);
  }
  return released;
}
