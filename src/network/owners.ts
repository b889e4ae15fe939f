/**
 * Who owns what Kindling made on the host's network, recorded outside any KINDLING_HOME so that a home
 * deleted with runs still holding resources (a SIGKILLed test's temp home, `rm -rf` of a worker) can be
 * swept by any later run (sweep.ts). Under /run: a tmpfs, gone at reboot with what it describes.
 *   homes/<tag>.json   which home a tag (sha256 of the home's path, in every name: kl-<tag>, kindling-<tag>) is
 *   runs/<netns>.json  a run's network resources, written before each is made, removed once all are released
 *   pool/<tag>/<netns> a namespace of the home's pool (pool.ts) that is ready to be taken (its record is in runs/)
 */
import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, rm, stat, unlink } from "node:fs/promises";
import path from "node:path";
import { takePidLock } from "../host/pidlock.js";
import { isSameProcess, processStartTime } from "../host/process.js";
import { writeFileAtomic } from "../util/atomic.js";
import type { NetworkResource } from "./resources.js";

export const OWNERS_DIR = "/run/kindling/network";
const HOMES = path.join(OWNERS_DIR, "homes");
const RUNS = path.join(OWNERS_DIR, "runs");
const POOL = path.join(OWNERS_DIR, "pool");

/** Where the ready namespaces of the home with `tag` are marked (pool.ts). */
export const poolDir = (tag: string) => path.join(POOL, tag);
/** The ready mark of a pooled namespace `kl-<tag>-...`. */
export const poolMarker = (netnsName: string) => path.join(poolDir(netnsName.slice(3, 11)), netnsName);

/** The short tag of a home's path: in its bridge, network and namespace names. */
export function homeTag(homeRoot: string): string {
  return createHash("sha256").update(homeRoot).digest("hex").slice(0, 8);
}

export interface HomeRecord {
  home: string;
  tag: string;
}

export interface RunRecord {
  home: string;
  runId: string;
  /** The process that holds the resources; with startTime it names one process for good. */
  pid: number;
  startTime: number;
  /** In the order made; released in reverse. */
  resources: NetworkResource[];
}

const homeFile = (tag: string) => path.join(HOMES, `${tag}.json`);
export const runRecordFile = (netnsName: string) => path.join(RUNS, `${netnsName}.json`);

/** Records which home `tag` is, once (a stat per run afterwards). */
export async function recordHome(homeRoot: string): Promise<void> {
  const tag = homeTag(homeRoot);
  const file = homeFile(tag);
  if (await exists(file)) return;
  await mkdir(HOMES, { recursive: true });
  const rec: HomeRecord = { home: homeRoot, tag };
  await writeFileAtomic(file, `${JSON.stringify(rec)}\n`);
}

/** Drops a home's record and the marker of its rules (homerules.ts). */
export async function forgetHome(tag: string): Promise<void> {
  await rm(poolDir(tag), { recursive: true, force: true }); // ready marks of its runs, released already
  for (const f of [`${tag}.rules`, `${tag}.mark`, `${tag}.lock`])
    await unlink(path.join(HOMES, f)).catch(() => {});
  await unlink(homeFile(tag)).catch(() => {});
}

export async function readHomeRecords(): Promise<HomeRecord[]> {
  const out: HomeRecord[] = [];
  for (const f of await readdir(HOMES).catch(() => [] as string[])) {
    if (!f.endsWith(".json") || f.startsWith(".")) continue;
    const rec = await readJson<HomeRecord>(path.join(HOMES, f));
    if (rec?.home && rec.tag) out.push(rec);
  }
  return out;
}

/** A run's record, kept in step with what the run holds (see attach.ts's holder). */
export class RunRecorder {
  private readonly rec: RunRecord;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    homeRoot: string,
    runId: string,
    readonly netnsName: string,
  ) {
    this.rec = {
      home: homeRoot,
      runId,
      pid: process.pid,
      startTime: processStartTime(process.pid) ?? 0,
      resources: [],
    };
  }

  get home(): string {
    return this.rec.home;
  }

  get resources(): readonly NetworkResource[] {
    return this.rec.resources;
  }

  add(...rs: NetworkResource[]): Promise<void> {
    this.rec.resources.push(...rs);
    return this.save();
  }

  /** Makes `pid` the owner (the process the teardown was handed to), so no sweep takes it meanwhile. */
  handOver(pid: number): Promise<void> {
    this.rec.pid = pid;
    this.rec.startTime = processStartTime(pid) ?? 0;
    return this.save();
  }

  /** Writes the record again (a resource changed, e.g. got its CNI result). */
  save(): Promise<void> {
    const json = `${JSON.stringify(this.rec)}\n`;
    const file = runRecordFile(this.netnsName);
    this.writing = this.writing.then(async () => {
      await mkdir(RUNS, { recursive: true });
      await writeFileAtomic(file, json);
    });
    return this.writing;
  }
}

export async function readRunRecords(): Promise<{ netnsName: string; rec: RunRecord }[]> {
  const out: { netnsName: string; rec: RunRecord }[] = [];
  for (const f of await readdir(RUNS).catch(() => [] as string[])) {
    if (!f.endsWith(".json") || f.startsWith(".")) continue;
    const rec = await readJson<RunRecord>(path.join(RUNS, f));
    if (rec && Array.isArray(rec.resources)) out.push({ netnsName: f.slice(0, -5), rec });
  }
  return out;
}

/** The DEL configs a release script (teardown.ts) left when it was killed: its record is gone. */
export async function removeOrphanReleaseFiles(): Promise<void> {
  const names = await readdir(RUNS).catch(() => [] as string[]);
  for (const f of names) {
    const m = /^(.*\.json)\.(?:del-\d+(?:\.gone)?|ipam)$/.exec(f);
    if (m && !names.includes(m[1]!)) await rm(path.join(RUNS, f), { recursive: true, force: true });
  }
}

/**
 * Marks whose owner's record is gone: ready marks (pool.ts) of released runs (a sweeper that did not
 * know of marks), and home rules marks (homerules.ts) of forgotten homes, which would keep a home made
 * again at the same path from making its rules (the sweep removes the rules of a tag with no home).
 */
export async function removeOrphanPoolMarks(): Promise<void> {
  for (const f of await readdir(HOMES).catch(() => [] as string[])) {
    const tag = /^([0-9a-f]{8})\.(?:rules|mark)$/.exec(f)?.[1];
    if (tag && !(await exists(homeFile(tag)))) await unlink(path.join(HOMES, f)).catch(() => {});
  }
  for (const tag of await readdir(POOL).catch(() => [] as string[])) {
    // (a home's record is written before its pool's directory: no record, no live pool)
    if (!(await exists(homeFile(tag)))) await rm(poolDir(tag), { recursive: true, force: true });
    for (const name of await readdir(poolDir(tag)).catch(() => [] as string[])) {
      if (!(await exists(runRecordFile(name)))) await unlink(path.join(poolDir(tag), name)).catch(() => {});
    }
  }
}

export async function readRunRecord(netnsName: string): Promise<RunRecord | undefined> {
  return readJson<RunRecord>(runRecordFile(netnsName));
}

/** Drops a run's record (and a pool's ready mark) once its namespace (made first, released last) is gone. */
export async function forgetRun(netnsName: string): Promise<void> {
  await unlink(poolMarker(netnsName)).catch(() => {});
  await unlink(runRecordFile(netnsName)).catch(() => {});
}

/**
 * Waits (at most `ms`) until no run of `homeRoot` is being released by a process it was handed to (its
 * run directory is gone, its owner lives): removing a home under such a process would let host-local's
 * DEL make the home's lease directory again.
 */
export async function waitForHandOffs(homeRoot: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const pending: RunRecord[] = [];
    for (const { rec } of await readRunRecords()) {
      if (rec.home !== homeRoot || !isSameProcess(rec.pid, rec.startTime)) continue;
      if (!(await exists(path.join(rec.home, "run", rec.runId)))) pending.push(rec);
    }
    if (pending.length === 0 || Date.now() > deadline) return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Whether a run record's owner is gone: its process ended and its home or run directory too. */
export async function runIsDead(rec: RunRecord): Promise<boolean> {
  if (isSameProcess(rec.pid, rec.startTime)) return false;
  return !(await exists(path.join(rec.home, "run", rec.runId)));
}

/**
 * The right to release a dead run's record, one sweeper at a time across processes: a lock file with
 * the sweeper's pid; a lock whose sweeper died is taken over. Returns the release function, or undefined.
 */
export async function claimRun(netnsName: string): Promise<(() => Promise<void>) | undefined> {
  const lock = path.join(RUNS, `.${netnsName}.lock`);
  if (!(await takePidLock(lock).catch(() => false))) return undefined;
  return () => unlink(lock).catch(() => {});
}

/** When the last full sweep (iptables included) ran, and marking it done. */
const STAMP = path.join(OWNERS_DIR, "swept");
export async function lastFullSweepMs(): Promise<number> {
  return (await stat(STAMP).catch(() => undefined))?.mtimeMs ?? 0;
}
export async function markFullSweep(): Promise<void> {
  await mkdir(OWNERS_DIR, { recursive: true });
  await writeFileAtomic(STAMP, `${new Date().toISOString()}\n`);
}

/**
 * Whether a home is there: its run/ directory, not just its path (host-local's DEL of a lease kept under
 * a home deleted meanwhile makes <home>/network/ipam/... again, and nothing else).
 */
export async function homeExists(homeRoot: string): Promise<boolean> {
  return exists(path.join(homeRoot, "run"));
}

export async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(file, "utf8")) as T;
  } catch {
    return undefined;
  }
}
