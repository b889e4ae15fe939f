/**
 * The lazy daemon's client: starts a daemon (or joins an image's shared one) and hands back the
 * lazy file, its stats and its close. See docs/lazy.md.
 */
import type { ChildProcess } from "node:child_process";
import { mkdir, open, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { policyFrom } from "../chunks/policy.js";
import { config } from "../config/index.js";
import { releaseFuseMount } from "../host/mounts.js";
import { isSameProcess, processStartTime } from "../host/process.js";
import { registrySettings } from "../registry/settings.js";
import { FetchLocks } from "../store/fetchlock.js";
import type { ChunkSource, Digest, ImageRecord } from "../store/types.js";
import { writeFileAtomic } from "../util/atomic.js";
import { errorMessage, KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { DaemonDir } from "./daemondir.js";
import { type EarlyDaemon, markEarlyUsed, spawnDaemon } from "./early.js";
import {
  addUser,
  findShared,
  isStopping,
  markStopping,
  sharedDaemonDirs,
  waitForStarting,
} from "./shared.js";
import { cleanupStaleDaemons, stopDaemon } from "./stale.js";
import { readStatsFile } from "./stats.js";
import type {
  DaemonMessage,
  DaemonState,
  FetchPolicy,
  LazyOptions,
  LazyStats,
  ParentMessage,
} from "./types.js";

export { DAEMON_JS, type EarlyDaemon, startEarlyDaemon } from "./early.js";

export interface LazyImage {
  /** The read-only block image file on the FUSE mount. */
  readonly path: string;
  /** The daemon serving it. */
  readonly pid: number;
  /** mnt/<id>: the daemon's directory (see DaemonDir). */
  readonly dir: string;
  /** With `lower`: where the image's SquashFS is mounted read-only (owned by the daemon). */
  readonly lowerDir?: string;
  stats(): Promise<LazyStats>;
  /**
   * Counts process `pid` as a user of a shared daemon for as long as it lives (a container that
   * may outlive the CLI that opened the image): the daemon stays, and `image rm` refuses.
   */
  holdFor(pid: number): Promise<void>;
  /** Unmounts and stops the daemon (a stuck one is aborted and killed). Safe to call twice. */
  close(): Promise<void>;
}

const READY_TIMEOUT_MS = 20_000;

/**
 * Starts a daemon that serves `record`'s block image as a read-only file. With source "auto" the
 * daemon fetches from the local store or the image's registry itself; with a ChunkSource object,
 * fetches are served by this process over IPC (so this process's event loop must stay free while
 * the file is read).
 */
export async function openLazyImage(
  home: KindlingHome,
  record: ImageRecord,
  source: ChunkSource | "auto",
  opts: LazyOptions = {},
): Promise<LazyImage> {
  await mkdir(home.blobs, { recursive: true });
  await mkdir(home.mounts, { recursive: true });
  await cleanupStaleDaemons(home).catch(() => {});
  if (source !== "auto" && (opts.detached || opts.shared)) {
    throw new KindlingError(
      "a detached or shared lazy image needs source 'auto' (nothing serves IPC fetches once we exit)",
    );
  }
  const policy = policyFrom(opts);
  if (!opts.shared) return startDaemon(home, record, source, opts, policy);
  // One start per image at a time: concurrent cold starts wait for the first and share its daemon.
  const lock = startLockPath(home, record, opts);
  const until = Date.now() + READY_TIMEOUT_MS + 5000;
  for (;;) {
    const running = await useRunningShared(home, record, opts);
    if (running) return running;
    if (await startLocks.tryLock(lock)) break;
    await startLocks.waitForPeer(lock, until);
    if (Date.now() >= until) break; // a starter that hangs: start our own rather than fail
  }
  try {
    return (
      (await useRunningShared(home, record, opts)) ?? (await startDaemon(home, record, source, opts, policy))
    );
  } finally {
    await rm(lock, { force: true });
  }
}

const startLocks = new FetchLocks();

/**
 * Starts the image's shared daemon (with `lower`: its SquashFS mount too) and returns once it is
 * spawned, without waiting for its mount: `image pull` calls it so the daemon starts, mounts and
 * fetches the startup pack while the pull's CLI exits and the run's starts. The daemon becomes the
 * holder of the start lock (an open meanwhile waits for it, then joins it) and the owner of its
 * directory; it removes the lock once it serves. With no user it leaves after its idle time.
 * Returns false when the image's daemon runs, or starts, already.
 */
export async function startSharedInBackground(
  home: KindlingHome,
  record: ImageRecord,
  opts: Pick<LazyOptions, "shared" | "lower" | keyof FetchPolicy> & { shared: LazyOptions["shared"] },
  early?: EarlyDaemon,
): Promise<boolean> {
  await mkdir(home.blobs, { recursive: true });
  await mkdir(home.mounts, { recursive: true });
  await cleanupStaleDaemons(home).catch(() => {});
  const policy = policyFrom(opts);
  const lock = startLockPath(home, record, opts);
  if (
    (await findShared(home, record.digest, policy, Boolean(opts.lower))) ||
    !(await startLocks.tryLock(lock))
  ) {
    await early?.cancel();
    return false;
  }
  try {
    await startDaemon(home, record, "auto", opts, policy, { lock, early });
  } catch (err) {
    await rm(lock, { force: true });
    throw err;
  }
  return true;
}

/** mnt/.start-<hex>[-lower]: one start of an image's shared daemon at a time. */
const startLockPath = (home: KindlingHome, record: ImageRecord, opts: Pick<LazyOptions, "lower">) =>
  path.join(home.mounts, `.start-${record.digest.slice(7)}${opts.lower ? "-lower" : ""}`);

async function startDaemon(
  home: KindlingHome,
  record: ImageRecord,
  source: ChunkSource | "auto",
  opts: LazyOptions,
  policy: FetchPolicy,
): Promise<LazyImage>;
async function startDaemon(
  home: KindlingHome,
  record: ImageRecord,
  source: "auto",
  opts: LazyOptions,
  policy: FetchPolicy,
  background: { lock: string; early?: EarlyDaemon },
): Promise<undefined>;
/**
 * `background`: a background start (startSharedInBackground) holding that start lock, with the
 * process an early start made (else a new one).
 */
async function startDaemon(
  home: KindlingHome,
  record: ImageRecord,
  source: ChunkSource | "auto",
  opts: LazyOptions,
  policy: FetchPolicy,
  background?: { lock: string; early?: EarlyDaemon },
): Promise<LazyImage | undefined> {
  const handOff = background?.lock;
  const early = background?.early;
  const ownerStartTime = processStartTime(process.pid) ?? 0;
  const detached = Boolean(opts.detached || opts.shared);
  const dir = await DaemonDir.create(
    home,
    (d) => ({
      home: home.root,
      id: d.id,
      dir: d.path,
      mountpoint: d.mountpoint,
      fileName: "image.sqfs",
      record,
      source: source === "auto" ? "auto" : "ipc",
      registry: source === "auto" && record.origin.kind === "registry" ? registrySettings() : undefined,
      settings: config(),
      policy,
      memoryCacheBytes: opts.memoryCacheBytes ?? 64 << 20,
      readaheadChunks: opts.readaheadChunks ?? 4,
      prefetch: opts.prefetch ?? true,
      fetchConcurrency: opts.fetchConcurrency ?? 8,
      detached,
      shared: opts.shared
        ? { idleMs: (typeof opts.shared === "object" && opts.shared.idleMs) || config().lazyIdleMs }
        : undefined,
      lower: Boolean(opts.lower),
      owner: process.pid,
      ownerStartTime,
      ...(handOff ? { startLock: handOff } : {}),
    }),
    early?.id,
  );
  if (early) markEarlyUsed(early);
  const id = dir.id;
  const mountpoint = dir.mountpoint;
  // A shared daemon counts users from its first look: be one before it starts (a background
  // start is none: the daemon waits its idle time for one).
  const token = opts.shared && !handOff ? await addUser(dir) : undefined;

  const logFile = dir.logFile;
  let child: ChildProcess;
  if (early) child = early.child;
  else {
    const logFd = await open(logFile, "a");
    try {
      child = spawnDaemon([dir.path], logFd.fd, detached);
    } finally {
      await logFd.close();
    }
  }
  if (source !== "auto") serveFetches(child, source);
  if (handOff) {
    await handOver(dir, child, handOff);
    return undefined;
  }

  let ready: Ready;
  try {
    ready = await waitReady(child);
  } catch (err) {
    child.kill("SIGKILL");
    await releaseFuseMount(mountpoint).catch(() => {});
    // The log's last lines without stack frames: the daemon's own message or Node's error.
    const lines = (await readFile(logFile, "utf8").catch(() => "")).trim().split("\n");
    const why = errorMessage(err);
    const tail = lines
      .filter((l) => !/^\s+at /.test(l) && l.trim() && !l.includes(why))
      .slice(-6)
      .join("\n");
    await rm(dir.path, { recursive: true, force: true }).catch(() => {});
    throw new KindlingError(
      `lazy image daemon for ${record.name} failed to start: ${why}${tail ? `\n${tail}` : ""}`,
    );
  }
  if (detached) child.disconnect();
  const pid = child.pid!;
  const filePath = ready.path;
  if (token) {
    const startTime = processStartTime(pid) ?? 0;
    return sharedUse(home, record, dir, { pid, startTime, path: filePath, lower: ready.lower }, token);
  }

  let closed: Promise<void> | undefined;
  let nextStatsId = 1;
  return {
    path: filePath,
    pid,
    dir: dir.path,
    lowerDir: ready.lower,
    holdFor: async () => {},
    async stats(): Promise<LazyStats> {
      if (child.connected) {
        const id = nextStatsId++;
        const got = await new Promise<LazyStats | null>((resolve) => {
          const timer = setTimeout(() => done(null), 2000);
          const onMsg = (m: DaemonMessage) => m.t === "stats" && m.id === id && done(m.stats);
          const done = (s: LazyStats | null) => {
            clearTimeout(timer);
            child.off("message", onMsg);
            resolve(s);
          };
          child.on("message", onMsg);
          child.send({ t: "stats", id } satisfies ParentMessage, (err) => err && done(null));
        });
        if (got) return got;
      }
      const s = await readStatsFile(home, record.digest, id);
      if (!s) throw new KindlingError(`no stats for lazy image ${record.name} (daemon ${pid})`);
      return s;
    },
    close(): Promise<void> {
      closed ??= stopDaemon(home, id);
      return closed;
    },
  };
}

/**
 * A use of the image's running shared daemon, if there is one for these options (else null):
 * the fast path of a `shared` open, which needs neither the block index nor a new process.
 * Only a daemon with the same fetch bounds will do: a run that asks for a shorter deadline gets it.
 */
export async function useRunningShared(
  home: KindlingHome,
  record: ImageRecord,
  opts: Pick<LazyOptions, keyof FetchPolicy | "lower"> = {},
): Promise<LazyImage | null> {
  const found = await findShared(home, record.digest, policyFrom(opts), Boolean(opts.lower));
  if (!found) return null;
  const token = await addUser(found.dir);
  // Seen after our token is written, `stopping` means the daemon may not have seen it.
  if (!(await isStopping(found.dir)) && isSameProcess(found.state.pid, found.state.startTime)) {
    return sharedUse(home, record, found.dir, found.state, token);
  }
  await rm(token, { force: true });
  return null;
}

/**
 * This process's use of a shared daemon: closing it drops the use, the daemon idles out. There is
 * no IPC channel to a shared daemon, so fresh stats are asked for with SIGUSR2 (the daemon writes
 * its stats file at once) and read from that file.
 */
function sharedUse(
  home: KindlingHome,
  record: ImageRecord,
  dir: DaemonDir,
  daemon: Pick<DaemonState, "pid" | "startTime" | "path" | "lower">,
  token: string,
): LazyImage {
  const { pid } = daemon;
  const read = () => readStatsFile(home, record.digest, dir.id);
  const tokens = [token];
  return {
    path: daemon.path,
    pid,
    dir: dir.path,
    async holdFor(user: number): Promise<void> {
      tokens.push(await addUser(dir, user));
    },
    lowerDir: daemon.lower,
    async stats(): Promise<LazyStats> {
      const asked = new Date().toISOString();
      if (isSameProcess(pid, daemon.startTime)) {
        process.kill(pid, "SIGUSR2");
        // The daemon answers in a few ms: poll briefly (a run's start waits on this), give up after 2 s.
        for (let waited = 0; waited < 2000; waited += 2) {
          const s = await read();
          if (s && s.updated >= asked) return s;
          await new Promise((r) => setTimeout(r, 2));
        }
      }
      const s = await read();
      if (!s) throw new KindlingError(`no stats for lazy image ${record.name} (daemon ${pid})`);
      return s;
    },
    // The tokens of processes still alive (an orphaned container's) stay until they end.
    close: () => rm(token, { force: true }),
  };
}

/**
 * A background start: the daemon becomes the owner of its directory (so a cleanup does not take
 * it for one whose opener died) and the holder of the start lock (it removes it once it serves).
 */
async function handOver(dir: DaemonDir, child: ChildProcess, lock: string): Promise<void> {
  try {
    const pid = child.pid;
    if (pid === undefined) throw new KindlingError("the lazy image daemon did not start");
    const startTime = processStartTime(pid) ?? 0;
    const cfg = await dir.readConfig();
    if (!cfg) throw new KindlingError(`${dir.configFile} is gone`);
    await writeFileAtomic(
      dir.configFile,
      JSON.stringify({ ...cfg, owner: pid, ownerStartTime: startTime }),
      0o600,
    );
    await writeFileAtomic(lock, `${pid} ${startTime}`);
  } catch (err) {
    child.kill("SIGKILL");
    await rm(dir.path, { recursive: true, force: true }).catch(() => {});
    throw err;
  } finally {
    // An early start reads its config (with its ownership, above) once the channel closes.
    if (child.connected) child.disconnect();
  }
}

type Ready = { path: string; lower?: string };

function waitReady(child: ChildProcess): Promise<Ready> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => finish(new Error(`not ready within ${READY_TIMEOUT_MS} ms`)),
      READY_TIMEOUT_MS,
    );
    const onMsg = (m: DaemonMessage) => {
      if (m.t === "ready") finish(null, { path: m.path, lower: m.lower });
      else if (m.t === "fatal") finish(new Error(m.message));
    };
    const onExit = (code: number | null, sig: string | null) =>
      finish(new Error(`daemon exited (${sig ?? `status ${code}`}) before it was ready`));
    const onError = (err: Error) => finish(err);
    const finish = (err: Error | null, p?: Ready) => {
      clearTimeout(timer);
      child.off("message", onMsg).off("exit", onExit).off("error", onError);
      if (err) reject(err);
      else resolve(p!);
    };
    child.on("message", onMsg).on("exit", onExit).on("error", onError);
  });
}

/** Serves the daemon's fetches from an in-process source; the daemon verifies what it gets. */
function serveFetches(child: ChildProcess, source: ChunkSource): void {
  const aborts = new Map<number, AbortController>();
  const reply = (m: ParentMessage) => {
    if (child.connected) child.send(m, () => {});
  };
  child.on("message", (m: DaemonMessage) => {
    if (m.t === "abort") {
      aborts.get(m.id)?.abort(new Error("timed out"));
      return;
    }
    if (m.t !== "fetch") return;
    const ac = new AbortController();
    aborts.set(m.id, ac);
    Promise.resolve()
      .then(() => source.fetch(m.digest as Digest, m.length, ac.signal))
      .then(
        (data) => !ac.signal.aborted && reply({ t: "chunk", id: m.id, data }),
        (err) => !ac.signal.aborted && reply({ t: "error", id: m.id, message: errorMessage(err) }),
      )
      .finally(() => aborts.delete(m.id));
  });
}

/**
 * Stops the shared daemons of this home (of one image, if `digest`) that have no live user now,
 * without waiting for their idle timeout: for `image rm`, and for tests that check for leftovers.
 * Returns how many it stopped.
 */
export async function stopIdleShared(home: KindlingHome, digest?: string): Promise<number> {
  // One still starting (after `image pull`) is stopped too, once it serves.
  await waitForStarting(home, digest, READY_TIMEOUT_MS);
  let stopped = 0;
  for (const dir of await sharedDaemonDirs(home, digest)) {
    if (!(await markStopping(dir))) continue;
    await stopDaemon(home, dir.id);
    stopped++;
  }
  return stopped;
}
