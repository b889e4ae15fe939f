import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { newFetchCounters } from "../chunks/fetcher.js";
import { writeFileAtomic } from "../util/atomic.js";
import type { KindlingHome } from "../util/home.js";
import { newReadTrace } from "./trace.js";
import type { LazyStats } from "./types.js";

/** A daemon's counters at its start. */
export function newStats(digest: string, blockSize: number): LazyStats {
  return {
    digest,
    blockSize,
    ...newFetchCounters(),
    verifyFailures: 0,
    cacheWriteErrors: 0,
    bytesServed: 0,
    reads: 0,
    cacheHits: 0,
    cacheMisses: 0,
    readErrors: 0,
    readaheadChunks: 0,
    prefetch: { state: "pending", chunks: 0, bytes: 0 },
    profile: { state: "none", chunks: 0, bytes: 0, errors: 0 },
    fileReadahead: { files: 0, chunks: 0, bytes: 0 },
    trace: newReadTrace(),
    updated: new Date().toISOString(),
  };
}

const hexOf = (digest: string) => digest.replace(/^sha256:/, "");

/** mnt/stats/<image hex>/: one JSON file per daemon that served the image; kept after it exits. */
export function statsDir(home: KindlingHome, digest: string): string {
  return path.join(home.mounts, "stats", hexOf(digest));
}

export async function writeStats(home: KindlingHome, id: string, stats: LazyStats): Promise<void> {
  const dir = statsDir(home, stats.digest);
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(path.join(dir, `${id}.json`), `${JSON.stringify(stats)}\n`);
}

export async function readStatsFile(
  home: KindlingHome,
  digest: string,
  id: string,
): Promise<LazyStats | null> {
  try {
    return JSON.parse(await readFile(path.join(statsDir(home, digest), `${id}.json`), "utf8")) as LazyStats;
  } catch {
    return null;
  }
}

export interface ImageLazyStats {
  digest: string;
  /** Daemons (past and present) that served this image. */
  daemons: number;
  bytesFetched: number;
  chunksFetched: number;
  bytesServed: number;
  reads: number;
  cacheHits: number;
  cacheMisses: number;
  fetchErrors: number;
  verifyFailures: number;
  readErrors: number;
  fetchesRefused: number;
  cacheWriteErrors: number;
}

/** Lazy-read counters of one image, summed over every daemon that served it (for `image inspect`). */
export async function imageStats(home: KindlingHome, digest: string): Promise<ImageLazyStats> {
  const sum: ImageLazyStats = {
    digest,
    daemons: 0,
    bytesFetched: 0,
    chunksFetched: 0,
    bytesServed: 0,
    reads: 0,
    cacheHits: 0,
    cacheMisses: 0,
    fetchErrors: 0,
    verifyFailures: 0,
    readErrors: 0,
    fetchesRefused: 0,
    cacheWriteErrors: 0,
  };
  const dir = statsDir(home, digest);
  const files = await readdir(dir).catch(() => [] as string[]);
  for (const f of files) {
    if (!f.endsWith(".json") || f.startsWith(".")) continue;
    let s: LazyStats;
    try {
      s = JSON.parse(await readFile(path.join(dir, f), "utf8")) as LazyStats;
    } catch {
      continue;
    }
    sum.daemons++;
    for (const k of [
      "bytesFetched",
      "chunksFetched",
      "bytesServed",
      "reads",
      "cacheHits",
      "cacheMisses",
      "fetchErrors",
      "verifyFailures",
      "readErrors",
      "fetchesRefused",
      "cacheWriteErrors",
    ] as const) {
      sum[k] += s[k] ?? 0;
    }
  }
  return sum;
}

/** Forgets an image's counters (for `image rm`). */
export async function removeImageStats(home: KindlingHome, digest: string): Promise<void> {
  await rm(statsDir(home, digest), { recursive: true, force: true });
}

/**
 * The counters of every daemon that served `digest` in this home, fresh: live daemons are asked to
 * write theirs now (SIGUSR2), waited for up to 2 s.
 */
export async function daemonStats(home: KindlingHome, digest: string, pids: number[]): Promise<LazyStats[]> {
  const asked = new Date().toISOString();
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGUSR2");
    } catch {
      // gone meanwhile: its file is final
    }
  }
  const dir = statsDir(home, digest);
  const readAll = async () => {
    const all: LazyStats[] = [];
    for (const f of await readdir(dir).catch(() => [] as string[])) {
      if (!f.endsWith(".json") || f.startsWith(".")) continue;
      const s = await readFile(path.join(dir, f), "utf8").then(
        (t) => JSON.parse(t) as LazyStats,
        () => null,
      );
      if (s) all.push(s);
    }
    return all;
  };
  for (let waited = 0; waited < 2000; waited += 10) {
    const all = await readAll();
    if (all.filter((s) => s.updated >= asked).length >= pids.length) return all;
    await new Promise((r) => setTimeout(r, 10));
  }
  return readAll();
}
