import type { FetchCounters } from "../chunks/fetcher.js";
import type { FetchPolicy } from "../chunks/policy.js";
import type { Config } from "../config/index.js";
import type { StartTime } from "../host/process.js";
import type { RegistrySettings } from "../registry/settings.js";
import type { StoreCounters } from "../store/chunkstore.js";
import type { ImageRecord } from "../store/types.js";
import type { ReadTrace } from "./trace.js";

/** Counters of one lazy image daemon; summed per image by imageStats(). */
export interface LazyStats extends FetchCounters, StoreCounters {
  digest: string;
  blockSize: number;
  /** Bytes returned to readers of the lazy file. */
  bytesServed: number;
  reads: number;
  /** Chunk lookups served from memory or the on-disk chunk cache. */
  cacheHits: number;
  /** Chunk lookups that needed the source (including readers that joined an in-flight fetch). */
  cacheMisses: number;
  /** Reads answered with an error (EIO). */
  readErrors: number;
  readaheadChunks: number;
  prefetch: { state: "pending" | "running" | "done" | "skipped" | "failed"; chunks: number; bytes: number };
  /**
   * The startup profile (profile.ts): "prefetching"/"done" when the image came with one (chunks
   * and bytes it fetched, fetches that failed), "recording" when this daemon records one, "none".
   */
  profile: {
    state: "none" | "recording" | "running" | "done";
    chunks: number;
    bytes: number;
    errors: number;
    /** Startup ranges that arrived verified (ranges.ts), when the image has them. */
    ranges?: number;
  };
  /**
   * File-aware readahead (files.ts): files whose first chunk was read and whose other chunks were
   * fetched ahead (chunks and bytes that had to be fetched).
   */
  fileReadahead: { files: number; chunks: number; bytes: number };
  /** Where a cold start's time goes: blocked reads, requests in flight over time (trace.ts). */
  trace: ReadTrace;
  /** ISO time these counters were taken. */
  updated: string;
}

export type { FetchPolicy };

export interface LazyOptions extends Partial<FetchPolicy> {
  /** Bytes of hot chunks kept in the daemon's memory (default 64 MiB). */
  memoryCacheBytes?: number;
  /** Chunks fetched ahead of a sequential reader (default 4). */
  readaheadChunks?: number;
  /** Prefetch chunk 0 and the SquashFS tables at mount (default true). */
  prefetch?: boolean;
  /** Source fetches running at once (default 8). */
  fetchConcurrency?: number;
  /** Keep the daemon running after this process exits (image mount). */
  detached?: boolean;
  /**
   * Use (or start) one daemon per image shared by every process that asks with `shared`: only
   * the first open pays for a daemon's start. It exits `idleMs` (default 30 s) after its last
   * user closes or dies. Needs source "auto"; the other options apply only when it starts.
   */
  shared?: boolean | { idleMs?: number };
  /**
   * Also mount the image's SquashFS read-only (the daemon owns the mount: lower.ts), for overlay
   * lower layers. A shared daemon is shared only with opens that ask the same.
   */
  lower?: boolean;
}

/** What the API hands the daemon (written to <dir>/config.json). */
export interface DaemonConfig {
  home: string;
  id: string;
  /** mnt/<id>: holds config.json, state.json, daemon.log and the FUSE mountpoint fs/. */
  dir: string;
  mountpoint: string;
  fileName: string;
  record: ImageRecord;
  /** "auto": the daemon opens the store or registry itself; "ipc": the parent serves fetches. */
  source: "auto" | "ipc";
  /** Credentials and registries.conf for source "auto" of a pulled image (daemons read no environment). */
  registry?: RegistrySettings;
  /**
   * The parent's resolved settings (src/config): the daemon pins them, so nothing in it reads the
   * environment (and a shared daemon keeps its creator's settings).
   */
  settings: Config;
  policy: FetchPolicy;
  memoryCacheBytes: number;
  readaheadChunks: number;
  prefetch: boolean;
  fetchConcurrency: number;
  detached: boolean;
  /** Shared daemon: exits after this long without users (see shared.ts). */
  shared?: { idleMs: number };
  /** Mount the SquashFS at <dir>/lower too (see lower.ts). */
  lower: boolean;
  /** Pid and start time of the process that asked for this image (a background start: the daemon). */
  owner: number;
  ownerStartTime: StartTime;
  /** A background start (client.ts startSharedInBackground): the start lock the daemon removes once it serves. */
  startLock?: string;
}

/** Written by the daemon once its mount is up; used to find and release it later. */
export interface DaemonState {
  pid: number;
  /** Process start time (from /proc/<pid>/stat), so a reused pid is not mistaken for the daemon. */
  startTime: StartTime;
  mountpoint: string;
  /** The lazy file: mountpoint/fileName. */
  path: string;
  digest: string;
  detached: boolean;
  shared: boolean;
  /** <dir>/lower, where the image's SquashFS is mounted, when the config asked for it. */
  lower?: string;
  /** The fetch bounds it serves with (a shared daemon is shared only by opens with the same). */
  policy: FetchPolicy;
  /** Copied from the config, so liveness checks need not parse the (large) index. */
  owner: number;
  ownerStartTime: StartTime;
}

/** Messages over the IPC channel between the API and the daemon. */
export type DaemonMessage =
  | { t: "ready"; pid: number; path: string; lower?: string }
  | { t: "fatal"; message: string }
  | { t: "fetch"; id: number; digest: string; length: number }
  | { t: "abort"; id: number }
  | { t: "stats"; id: number; stats: LazyStats };

/** The daemon's argument before its directory: an early start, which waits for the directory to be made. */
export const AWAIT_DIR = "--await-dir";

export type ParentMessage =
  | { t: "chunk"; id: number; data: Uint8Array }
  | { t: "error"; id: number; message: string }
  | { t: "stats"; id: number }
  | { t: "stop" };
