/**
 * One run of one variant, driven through the Runtime API in-process (no hooks in the runtimes):
 *   t0 = before the run dir and prepare(); prepMs = prepare() (or the runtime's own prepMs);
 *   firstOutputMs = t0 -> first byte on the piped stdout; totalMs = t0 -> exit and release;
 *   fetchedBytes = chunk bytes that arrived in the home during the run; for a run that fetched,
 *   fetchMBps = fetchedBytes / totalMs, and ttfbMs = t0 -> the first chunk from the registry (lazy
 *   daemons' counters);
 *   diskBytes = the run dir on disk after the process ended, before release.
 */

import { daemonStats, imageStats, liveDaemonPids } from "../lazy/index.js";
import { resolveImage } from "../runtime/image.js";
import { RunDir } from "../runtime/rundir.js";
import type { Container, RunOptions, Runtime } from "../runtime/types.js";
import { readBlockIndex } from "../store/blockindex.js";
import { loadImage } from "../store/catalog.js";
import { localBytes } from "../store/local.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { Scope } from "../util/scope.js";
import { diskUsage } from "./disk.js";

export interface RunTarget {
  home: KindlingHome;
  runtime: Runtime;
  /** The image's name in `home`. */
  imageRef: string;
  options: RunOptions;
  /** Text the process must print (checks the run did what it should). */
  expect: string;
  /** A run taking longer is killed and fails. */
  timeoutMs: number;
}

export interface Measured {
  prepMs: number;
  firstOutputMs: number;
  totalMs: number;
  fetchedBytes: number;
  blockSize: number;
  diskBytes: number;
  bootMs?: number;
  ttfbMs?: number;
  fetchMBps?: number;
}

/** What VM runtimes may report on their Container (optional: measured from outside otherwise). */
type TimedContainer = Container & { prepMs?: number; bootMs?: number };

const now = () => performance.now();

/** Bytes fetched into `home` so far: chunks present locally, and what the lazy daemons counted. */
async function fetchedSoFar(home: KindlingHome, ref: string): Promise<{ local: number; lazy: number }> {
  const record = await loadImage(home, ref);
  const index = await readBlockIndex(home, record.digest);
  const [local, stats] = await Promise.all([localBytes(home, index), imageStats(home, record.digest)]);
  return { local, lazy: stats.bytesFetched };
}

export async function measureRun(t: RunTarget): Promise<Measured> {
  const before = await fetchedSoFar(t.home, t.imageRef);
  let prepMs = 0;
  let firstOutputMs = Number.NaN;
  let diskBytes = 0;
  let duMs = 0;
  let blockSize = 0;
  let bootMs: number | undefined;
  const t0 = now();
  const startedAt = Date.now();
  await Scope.with(async (scope) => {
    const image = await resolveImage(t.home, t.imageRef);
    blockSize = (await loadImage(t.home, t.imageRef)).blockSize;
    const runDir = await RunDir.create(t.home, scope, t.runtime.name, image.name);
    const tp = now();
    const container: TimedContainer = await t.runtime.prepare(
      {
        id: runDir.id,
        runDir,
        image,
        options: t.options,
        stdio: { stdin: "ignore", stdout: "pipe", stderr: "pipe" },
      },
      scope,
    );
    prepMs = now() - tp;
    scope.defer(`container ${runDir.id}`, () => container.delete());
    const { stdout, stderr } = await container.start();
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const drained = Promise.all([
      collect(stdout, out, () => {
        if (Number.isNaN(firstOutputMs)) firstOutputMs = now() - t0;
      }),
      collect(stderr, err),
    ]);
    const timer = setTimeout(() => void container.kill("KILL").catch(() => {}), t.timeoutMs);
    let status: number;
    try {
      status = (await container.wait()).status;
      await drained;
    } finally {
      clearTimeout(timer);
    }
    const td = now();
    diskBytes = await diskUsage(runDir.path);
    duMs = now() - td;
    if (container.prepMs !== undefined) prepMs = container.prepMs;
    bootMs = container.bootMs;
    const text = Buffer.concat(out).toString();
    if (status !== 0 || !text.includes(t.expect)) {
      const why = Buffer.concat(err).toString().trim().slice(-500);
      throw new KindlingError(`run ended with status ${status}, output ${JSON.stringify(text)}: ${why}`);
    }
  });
  const totalMs = now() - t0 - duMs;
  const after = await fetchedSoFar(t.home, t.imageRef);
  // Whichever path fetched (lazy daemon, or a runtime reading the store), the larger count is real.
  const fetchedBytes = Math.max(after.local - before.local, after.lazy - before.lazy);
  const fetch = fetchedBytes > 0 ? await firstChunk(t.home, t.imageRef, startedAt) : undefined;
  return {
    prepMs,
    firstOutputMs,
    totalMs,
    fetchedBytes,
    blockSize,
    diskBytes,
    bootMs,
    ...(fetchedBytes > 0 ? { fetchMBps: fetchedBytes / 1e3 / totalMs } : {}),
    ...(fetch !== undefined ? { ttfbMs: fetch } : {}),
  };
}

/** ms from `since` (epoch) to the first chunk a lazy daemon of the image got after it, if any. */
async function firstChunk(home: KindlingHome, ref: string, since: number): Promise<number | undefined> {
  const { digest } = await loadImage(home, ref);
  const firsts = (await daemonStats(home, digest, await liveDaemonPids(home, digest)))
    .map((s) => s.firstChunkAt ?? 0)
    .filter((at) => at >= since);
  return firsts.length ? Math.min(...firsts) - since : undefined;
}

function collect(stream: NodeJS.ReadableStream | null, into: Buffer[], onFirst?: () => void): Promise<void> {
  if (!stream) return Promise.resolve();
  return new Promise((resolve, reject) => {
    stream.on("data", (d: Buffer) => {
      if (into.length === 0) onFirst?.();
      into.push(d);
    });
    stream.on("end", resolve);
    stream.on("close", resolve);
    stream.on("error", reject);
  });
}
