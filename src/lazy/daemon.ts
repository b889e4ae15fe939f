/**
 * The lazy image daemon: one process per LazyImage, serving its block image over FUSE. It runs
 * apart from the CLI so a CLI blocked in synchronous work never deadlocks on its own mount, and so
 * it can be killed. Usage: node daemon.js <dir>   (dir holds config.json; see types.ts), or
 * node daemon.js --await-dir <dir>   (an early start, made before its directory: see daemonDir())
 */
import { readFile, rm, stat } from "node:fs/promises";
import path from "node:path";
import { hasRanges, PackLoader } from "../chunks/packloader.js";
import { chunkReaderFor } from "../chunks/sources.js";
import { useConfig } from "../config/index.js";
import { setMountReadahead } from "../host/bdi.js";
import { lazyUnmount } from "../host/mounts.js";
import { processStartTime } from "../host/process.js";
import { readBlockIndex } from "../store/blockindex.js";
import { checkPacks, readPacksFile } from "../store/packs.js";
import { writeFileAtomic } from "../util/atomic.js";
import { KindlingHome } from "../util/home.js";
import { trace, traceAt, traceNow, traceTo } from "../util/trace.js";
import { BackgroundLoads } from "./background.js";
import { ChunkCache } from "./cache.js";
import { validateIndex } from "./chunkmap.js";
import { DaemonDir } from "./daemondir.js";
import { FileReadahead, fileEnds, readFileExtents } from "./files.js";
import { mountBlockFile } from "./fusefs.js";
import { LowerMounts } from "./lower.js";
import { prefetchTables } from "./prefetch.js";
import {
  checkProfile,
  ProfileRecorder,
  prefetchProfile,
  readProfileFile,
  writeProfile,
  writeProfileReads,
} from "./profile.js";
import { StartupRanges } from "./ranges.js";
import { Readahead } from "./readahead.js";
import { liveUsers, markStopping } from "./shared.js";
import { IpcChunkSource, send } from "./sources.js";
import { newStats, writeStats } from "./stats.js";
import { ReadTracer } from "./trace.js";
import { AWAIT_DIR, type DaemonConfig, type DaemonState, type ParentMessage } from "./types.js";

const log = (msg: string) => process.stderr.write(`${new Date().toISOString()} ${msg}\n`);

/**
 * Our directory: the argument; with AWAIT_DIR (an early start by `image pull`, before its image was
 * known: client.ts startEarlyDaemon) once the starter's IPC channel closes. The starter closes it
 * after making the directory (renamed into place whole, config and all), or exits or dies without:
 * then there is nothing to serve and we exit. No message is awaited: one sent just before the
 * channel closes can be lost.
 */
async function daemonDir(): Promise<string> {
  if (process.argv[2] !== AWAIT_DIR) return process.argv[2]!;
  const dir = process.argv[3]!;
  // A "disconnect" listener keeps the channel, and so this process, alive until then.
  if (process.connected) await new Promise((resolve) => process.once("disconnect", resolve));
  if (!(await stat(path.join(dir, "config.json")).catch(() => null))) process.exit(0);
  return dir;
}

async function main(): Promise<void> {
  const loadedAt = traceNow();
  const dir = await daemonDir();
  const cfg = JSON.parse(await readFile(path.join(dir, "config.json"), "utf8")) as DaemonConfig;
  // Settings are the parent's, never our environment's: config() anywhere in this process gives these.
  useConfig(Object.freeze(cfg.settings));
  if (cfg.settings.trace) {
    traceTo(cfg.settings.trace, "lazy");
    traceAt(performance.timeOrigin, "lazy: process start");
    traceAt(loadedAt, "lazy: modules loaded");
    trace("lazy: config read");
  }
  const home = new KindlingHome(cfg.home);
  // The index by digest from the store (verified there), not copied into our config.
  const index = await readBlockIndex(home, cfg.record.digest);
  validateIndex(index);
  if (index.blockSize !== cfg.record.blockSize) {
    throw new Error(`index says ${index.blockSize} bytes, record ${cfg.record.blockSize}`);
  }
  const stats = newStats(cfg.record.digest, index.blockSize);
  const loader = chunkReaderFor(home, cfg.record.origin, cfg.policy, {
    source: cfg.source === "ipc" ? new IpcChunkSource(`source of process ${cfg.owner}`) : undefined,
    concurrency: cfg.fetchConcurrency,
    counters: stats,
    registry: cfg.registry,
    log,
  });
  const cache = new ChunkCache(index, loader, stats, cfg.memoryCacheBytes);
  // The image's packs (pulled with it): many chunks per request (chunks/packs.ts).
  const packsFile = await readPacksFile(home, cfg.record.digest);
  const checkedPacks = packsFile === undefined ? undefined : checkPacks(packsFile, index, cfg.record.digest);
  if (checkedPacks && "corrupt" in checkedPacks) {
    log(`warning: ignoring the packs of ${cfg.record.name}: ${checkedPacks.corrupt}`);
  }
  const packs =
    checkedPacks && "packs" in checkedPacks && hasRanges(loader.fetcher.source)
      ? new PackLoader(index, checkedPacks.packs, loader, loader.fetcher.source, {
          wanted: (d) => cache.isWanted(d),
          inMemory: (d) => cache.inMemory(d),
          arrived: (i, data) => cache.keep(i, data),
          log,
        })
      : undefined;
  // The image's file layout, read once from its tables when first wanted (a stream's bound, file-aware readahead).
  let extents: ReturnType<typeof readFileExtents> | undefined;
  const fileExtents = () => {
    extents ??= readFileExtents(cache).then((files) => {
      log(`file layout read: ${files.length} files`);
      return files;
    });
    return extents;
  };
  const readahead = new Readahead(
    cache,
    cfg.readaheadChunks,
    log,
    packs,
    cfg.settings.lazyKernelReadahead,
    async () => fileEnds(await fileExtents()),
  );
  const tracer = new ReadTracer(stats);
  // Set once the image's file extents are read (after the tables' prefetch).
  let files: FileReadahead | undefined;
  // A startup profile for this image: prefetch it; none (or a stale one): record one.
  const profileFile = await readProfileFile(home, cfg.record.digest);
  const profile = checkProfile(profileFile, cfg.record.digest, index.chunks.length);
  const recorder = "chunks" in profile ? undefined : new ProfileRecorder(cache);
  if ("corrupt" in profile && profileFile !== undefined) {
    log(`warning: ignoring the startup profile of ${cfg.record.name}: ${profile.corrupt}`);
  }
  if (recorder) stats.profile.state = "recording";
  let recorded = 0;

  let written = "";
  const flush = async () => {
    written = JSON.stringify({ ...cache.stats, updated: "" });
    cache.stats.updated = new Date().toISOString();
    await writeStats(home, cfg.id, cache.stats).catch((err) => log(`stats: ${err}`));
    if (recorder && recorder.version !== recorded) {
      recorded = recorder.version;
      await writeProfile(home, { image: cfg.record.digest, chunks: recorder.chunks })
        .then(() => writeProfileReads(home, cfg.record.digest, recorder.ranges))
        .catch((err) => log(`startup profile: ${err}`));
    }
  };
  // SquashFS reads one block at a time and waits for it: through a loop device with direct I/O,
  // every block is a round trip to this process. Read through the page cache instead, with this
  // much kernel readahead on our file, a sequential reader's blocks are already there (docs/lazy.md).
  const kernelReadahead = cfg.settings.lazyKernelReadahead;
  const ddir = new DaemonDir(home, cfg.id);
  const filePath = path.join(cfg.mountpoint, cfg.fileName);
  let state: DaemonState | undefined;
  const lowers = new LowerMounts(
    ddir,
    filePath,
    log,
    async (lower) => {
      if (!state) return;
      state.lower = lower;
      await writeFileAtomic(ddir.stateFile, `${JSON.stringify(state)}\n`);
    },
    { directIo: kernelReadahead === 0 },
  );
  let stopping = false;
  const stop = async (why: string) => {
    if (stopping) return;
    stopping = true;
    log(`stopping: ${why}`);
    await flush();
    // The SquashFS over our file first: it reads through the FUSE mount.
    await lowers.closeAll().catch((err) => log(`unmount lower: ${err}`));
    await lazyUnmount(cfg.mountpoint).catch((err) => log(`unmount: ${err}`));
    await cache.close();
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  // Ctrl-C at a terminal is for the CLI, which then closes us in order (after its loop devices);
  // if it dies instead, the IPC channel closes and we stop.
  process.on("SIGINT", () => {});
  process.on("SIGHUP", () => {}); // a detached daemon outlives its terminal
  process.on("SIGUSR2", () => void flush()); // a shared daemon's user asks for fresh stats
  if (!cfg.detached) process.on("disconnect", () => void stop("owner disconnected"));
  process.on("message", (m: ParentMessage) => {
    if (m.t === "stats") {
      cache.stats.updated = new Date().toISOString();
      send({ t: "stats", id: m.id, stats: cache.stats });
    } else if (m.t === "stop") void stop("asked to stop");
  });

  // Startup ranges (the byte ranges a first run read, ranges.ts): one request, started before the
  // mount; reads inside them are served from them as they arrive, the rest through chunks.
  const rangePack = "chunks" in profile && cfg.prefetch ? packs?.packs.startupRanges : undefined;
  const rangeSource = hasRanges(loader.fetcher.source) ? loader.fetcher.source : undefined;
  const ranges = rangePack && rangeSource ? new StartupRanges(rangePack, cache.stats, log) : undefined;
  const rangesLoaded = ranges
    ? ranges
        // Bounded by one attempt's time: a reader waiting for a range then still has the chunk
        // path's deadline, and waits one attempt plus one deadline at worst.
        .load(rangeSource!, (fn) => loader.fetcher.slot(fn), cfg.policy.attemptTimeoutMs)
        .then((got) => {
          log(
            `startup ranges: ${got.ranges} of ${rangePack!.ranges.length} (${got.bytes} bytes) fetched ahead`,
          );
          trace("lazy: startup ranges fetched");
        })
    : undefined;
  if (ranges) trace("lazy: startup ranges requested");
  // A startup pack: one request for the profile's chunks, started before the mount, whose own reads
  // (superblock, tables) then join it; chunks reach readers as they arrive.
  const startup = "chunks" in profile && cfg.prefetch && !ranges ? packs?.packs.startup : undefined;
  if (startup) {
    const p = cache.stats.profile;
    p.state = "running";
    trace("lazy: startup pack requested");
    packs!
      .loadPack(startup)
      .then((got) => {
        p.chunks += got.chunks;
        p.bytes += got.bytes;
        p.state = "done";
        log(`startup pack: ${got.chunks} chunks fetched ahead`);
        trace("lazy: startup pack fetched");
      })
      .catch((err) => {
        p.errors++;
        p.state = "done";
        log(`startup pack failed: ${err instanceof Error ? err.message : err}`);
      });
  }

  await mountBlockFile({
    mountpoint: cfg.mountpoint,
    fileName: cfg.fileName,
    cache,
    readahead,
    onRead: (pos, len) => {
      recorder?.touch(pos, len);
      files?.observe(pos, len);
    },
    tracer,
    opTimeoutMs: cfg.policy.deadlineMs + 5000,
    kernelCache: cfg.settings.lazyKernelCache,
    directIo: cfg.settings.lazyDirectIo,
    onReadError: () => lowers.readFailed(),
    ranges,
    log,
  });
  trace("lazy: FUSE mounted");
  if (kernelReadahead > 0) {
    await setMountReadahead(cfg.mountpoint, kernelReadahead).catch((err) =>
      log(`kernel readahead of ${cfg.mountpoint}: ${err instanceof Error ? err.message : err}`),
    );
  }
  const lowerDir = cfg.lower ? await lowers.mount() : undefined;
  state = {
    pid: process.pid,
    startTime: processStartTime(process.pid) ?? 0,
    mountpoint: cfg.mountpoint,
    path: path.join(cfg.mountpoint, cfg.fileName),
    digest: cfg.record.digest,
    detached: cfg.detached,
    shared: Boolean(cfg.shared),
    ...(lowerDir ? { lower: lowerDir } : {}),
    policy: cfg.policy,
    owner: cfg.owner,
    ownerStartTime: cfg.ownerStartTime,
  };
  await writeFileAtomic(ddir.stateFile, `${JSON.stringify(state)}\n`);
  // A background start: openers waiting on the start lock now find us by our state.
  if (cfg.startLock) await releaseStartLock(cfg.startLock);
  stats.trace.mountedAt = Date.now();
  tracer.start();
  await flush();
  send({ t: "ready", pid: process.pid, path: filePath, lower: lowerDir });
  trace("lazy: serving");
  log(`serving ${cfg.record.name} (${cfg.record.digest}) at ${cfg.mountpoint}`);

  // A connection aborted from outside (fusectl) leaves us alive but useless: notice and go.
  setInterval(() => {
    stat(cfg.mountpoint).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOTCONN" || err.code === "ECONNABORTED") void stop("FUSE connection lost");
    });
  }, 5000).unref();
  // A shared daemon leaves once it has had no users for idleMs (see shared.ts).
  const shared = cfg.shared;
  if (shared) {
    let idleSince: number | undefined;
    setInterval(
      async () => {
        if (stopping) return;
        if ((await liveUsers(ddir)) > 0) {
          idleSince = undefined;
          return;
        }
        idleSince ??= Date.now();
        if (Date.now() - idleSince >= shared.idleMs && (await markStopping(ddir))) void stop("idle");
      },
      Math.min(1000, Math.max(50, shared.idleMs / 4)),
    ).unref();
  }
  // Counters reach `image inspect` through the stats file; write it when they change.
  setInterval(() => {
    if (JSON.stringify({ ...cache.stats, updated: "" }) !== written) void flush();
  }, 1000).unref();
  // Without a startup pack, the profile's chunks one by one (the tables' prefetch below joins them).
  if ("chunks" in profile && cfg.prefetch && !startup && !ranges) {
    // Leaves readers a slot or two: the limiter hands freed slots to readers first anyway.
    prefetchProfile(cache, profile.chunks, Math.max(1, cfg.fetchConcurrency - 2))
      .then(() => log(`startup profile: ${cache.stats.profile.chunks} chunks fetched ahead`))
      .catch((err) => log(`startup profile prefetch failed: ${err instanceof Error ? err.message : err}`));
  }
  if (cfg.prefetch) {
    const fileBytes = cfg.settings.lazyFileReadahead;
    // With startup ranges, after them (they hold what the run reads of the tables; this is for later reads).
    Promise.resolve(rangesLoaded)
      .then(() => prefetchTables(cache))
      .then(async () => {
        log(`prefetch ${cache.stats.prefetch.state}: ${cache.stats.prefetch.chunks} chunks`);
        if (fileBytes <= 0 || cache.stats.prefetch.state !== "done") return;
        // Leaves readers a slot or two: the limiter hands freed slots to readers first anyway.
        const loads = new BackgroundLoads(cache, Math.max(1, cfg.fetchConcurrency - 2), log);
        await fileExtents().then(
          (extents) => {
            const f = FileReadahead.from(cache, loads, extents, fileBytes);
            files = f;
            log(`file-aware readahead: ${f.files} files of at most ${fileBytes} bytes`);
          },
          (err) => log(`file-aware readahead off: ${err instanceof Error ? err.message : err}`),
        );
      })
      .catch((err) => log(`prefetch failed: ${err instanceof Error ? err.message : err}`));
  } else cache.stats.prefetch.state = "skipped";
}

/** Removes the start lock if this process holds it (a background start handed it to us). */
async function releaseStartLock(lock: string): Promise<void> {
  const holder = await readFile(lock, "utf8").catch(() => "");
  if (Number(holder.split(" ")[0]) === process.pid) await rm(lock, { force: true });
}

main().catch((err) => {
  const message = err instanceof Error ? err.message : String(err);
  log(`fatal: ${message}`);
  send({ t: "fatal", message });
  setTimeout(() => process.exit(1), 50);
});
