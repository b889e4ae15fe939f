import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rename, rm, stat, unlink } from "node:fs/promises";
import path from "node:path";
import { mountsUnder, unmount } from "../host/mounts.js";
import { takePidLock } from "../host/pidlock.js";
import { isSameProcess, processStartTime } from "../host/process.js";
import type { NetworkInfo } from "../network/types.js";
import { writeFileAtomic } from "../util/atomic.js";
import { errorMessage } from "../util/errors.js";
import { KindlingHome } from "../util/home.js";
import type { Scope } from "../util/scope.js";
import { describeResource, type Resource, releaseResource } from "./resources.js";

/** $KINDLING_HOME/run/<id>/owner.json: who owns the run and what it holds, for cleanup after a crash. */
export interface OwnerRecord {
  id: string;
  pid: number;
  /** With pid, identifies the owner even after pid reuse. */
  startTime: number;
  runtime: string;
  image: string;
  created: string;
  /** In the order acquired; released in reverse. */
  resources: Resource[];
  /** What the run got on its network (address, MAC, gateway, ports), once it is set up: for `inspect`. */
  network?: NetworkInfo;
}

export const OWNER_FILE = "owner.json";

/** A fresh container id: short, unique on this host, valid for runc and as a host name. */
export function newRunId(): string {
  return randomBytes(6).toString("hex");
}

/**
 * One run's directory. Every resource is recorded in owner.json before (or, when its name is only
 * known afterwards, right after) it is acquired, so a run that dies can be cleaned up by the next.
 */
export class RunDir {
  private record: OwnerRecord;
  private writing: Promise<void> = Promise.resolve();
  /** The next write, not started yet: saves asked meanwhile share it (it has all their changes). */
  private queued?: Promise<void>;

  private constructor(
    readonly path: string,
    record: OwnerRecord,
  ) {
    this.record = record;
  }

  get id(): string {
    return this.record.id;
  }

  /**
   * Creates run/<id>/ with its owner.json; `scope` removes the directory last. It is made under a
   * temporary name and renamed, so no other run ever sees a run dir without an owner.
   */
  static async create(
    home: KindlingHome,
    scope: Scope,
    runtime: string,
    image: string,
    id = newRunId(),
  ): Promise<RunDir> {
    const dir = path.join(home.runs, id);
    const tmp = path.join(home.runs, `.new-${id}`);
    const record: OwnerRecord = {
      id,
      pid: process.pid,
      startTime: processStartTime(process.pid) ?? 0,
      runtime,
      image,
      created: new Date().toISOString(),
      resources: [],
    };
    await mkdir(tmp, { recursive: true });
    await writeFileAtomic(path.join(tmp, OWNER_FILE), `${JSON.stringify(record, null, 2)}\n`);
    await rename(tmp, dir);
    const runDir = new RunDir(dir, record);
    scope.defer(`run dir ${dir}`, () => removeRunDir(dir));
    return runDir;
  }

  /** The home this run dir belongs to ($KINDLING_HOME/run/<id>). */
  get home(): KindlingHome {
    return new KindlingHome(path.dirname(path.dirname(this.path)));
  }

  /** The run's network, as recorded in owner.json. */
  get network(): NetworkInfo | undefined {
    return this.record.network;
  }

  /** Records the run's network in owner.json (read by `inspect`). */
  async setNetwork(info: NetworkInfo): Promise<void> {
    this.record.network = info;
    await this.save();
  }

  file(...parts: string[]): string {
    return path.join(this.path, ...parts);
  }

  /** Records `resource` in owner.json and makes `scope` release it (then drop it from the record). */
  async hold(scope: Scope, resource: Resource): Promise<void> {
    this.record.resources.push(resource);
    await this.save();
    scope.defer(describeResource(resource), async () => {
      await releaseResource(resource);
      this.record.resources = this.record.resources.filter((r) => r !== resource);
      await this.save();
    });
  }

  /** Records a change to a held resource (e.g. a loop device now set to autoclear). */
  async update<R extends Resource>(resource: R, change: Partial<R>): Promise<void> {
    Object.assign(resource, change);
    await this.save();
  }

  private save(): Promise<void> {
    // Serialized: overlapping atomic writes could otherwise publish an older record last. Coalesced:
    // the network and the rootfs record their resources at the same time (a write per change queued
    // behind each other put several writes on a run's start).
    if (this.queued) return this.queued;
    const next = this.writing.then(() => {
      this.queued = undefined;
      return writeFileAtomic(this.file(OWNER_FILE), `${JSON.stringify(this.record, null, 2)}\n`);
    });
    this.queued = next;
    this.writing = next.catch(() => {});
    return next;
  }
}

/** Run dirs taken out of run/ whose files are removed later (deferRunDirRemoval). */
const deferred: string[] = [];
let deferRemoval = false;

/**
 * A container's supervisor (src/service/shim.ts) reports a run's end before its run dir's files are
 * removed (~20 small files and dirs: tens of ms on a busy disk): the run dir leaves run/ in one rename
 * once nothing is mounted under it, and removeDeferredRunDirs() removes the files after the report.
 * Off by default: in-process callers (tests, benchmarks) find the run dir gone once the run ended.
 */
export function deferRunDirRemoval(on: boolean): void {
  deferRemoval = on;
}

/** Removes the run dirs whose removal was deferred. */
export async function removeDeferredRunDirs(): Promise<void> {
  await Promise.all(deferred.splice(0).map((d) => rm(d, { recursive: true, force: true }).catch(() => {})));
}

/** Where a run dir goes until its files are removed: the home's tmp/ (same filesystem; swept if left). */
const asideOf = (dir: string) =>
  path.join(path.dirname(path.dirname(dir)), "tmp", `${ASIDE}${path.basename(dir)}`);
const ASIDE = "run-removed-";

/** Removes a run dir, but never through a mount: a leftover mount is reported, not emptied. */
async function removeRunDir(dir: string): Promise<void> {
  const left = await mountsUnder(dir);
  if (left.length > 0) {
    throw new Error(`not removing ${dir}: still mounted at ${left.map((m) => m.mountPoint).join(", ")}`);
  }
  if (deferRemoval) {
    const aside = asideOf(dir);
    const moved = await rename(dir, aside).then(
      () => true,
      () => false,
    );
    if (moved) {
      deferred.push(aside);
      return;
    }
  }
  await rm(dir, { recursive: true, force: true });
}

/** Run dirs a supervisor took out of run/ and died before removing (files only: nothing mounted). */
async function removeLeftAside(home: KindlingHome): Promise<void> {
  const names = await readdir(home.tmp).catch(() => [] as string[]);
  for (const n of names.filter((x) => x.startsWith(ASIDE))) {
    const dir = path.join(home.tmp, n);
    const age = await stat(dir).then(
      (s) => Date.now() - s.mtimeMs,
      () => 0,
    );
    if (age > 60_000) await rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}

export interface CleanupReport {
  /** Run ids whose leftovers were released. */
  cleaned: string[];
  /** Problems that left something behind. */
  errors: string[];
}

/**
 * Releases what dead runs left behind (their owner is gone): containers, mounts, loop devices,
 * processes, and the directory. Runs whose owner lives are not touched. Safe to call concurrently.
 */
export async function cleanupStaleRuns(home: KindlingHome): Promise<CleanupReport> {
  const report: CleanupReport = { cleaned: [], errors: [] };
  await removeLeftAside(home);
  let entries: string[];
  try {
    entries = await readdir(home.runs);
  } catch {
    return report;
  }
  for (const name of entries) {
    const dir = path.join(home.runs, name);
    try {
      if (name.startsWith(".new-")) {
        // A run dir being created: stale only if its creator left it long ago.
        if (Date.now() - (await stat(dir)).mtimeMs > 60_000) await removeRunDir(dir);
        continue;
      }
      if (name.startsWith(".")) continue;
      const owner = await readOwner(dir);
      if (owner && isSameProcess(owner.pid, owner.startTime)) continue;
      if (!(await claim(dir))) continue;
      await releaseStaleRun(dir, owner, report);
    } catch (err) {
      report.errors.push(`${name}: ${errorMessage(err)}`);
    }
  }
  return report;
}

/** A run dir's owner.json (resources, and `network` once set up), or undefined if unreadable. */
export async function readOwner(dir: string): Promise<OwnerRecord | undefined> {
  try {
    return JSON.parse(await readFile(path.join(dir, OWNER_FILE), "utf8")) as OwnerRecord;
  } catch {
    return undefined;
  }
}

/** Takes the right to clean a dead run: one cleaner at a time, even across processes. */
async function claim(dir: string): Promise<boolean> {
  return takePidLock(path.join(dir, "reaper.lock")).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return false; // the run dir was removed meanwhile
    throw err;
  });
}

async function releaseStaleRun(
  dir: string,
  owner: OwnerRecord | undefined,
  report: CleanupReport,
): Promise<void> {
  let ok = true;
  for (const r of [...(owner?.resources ?? [])].reverse()) {
    try {
      await releaseResource(r);
    } catch (err) {
      ok = false;
      report.errors.push(`${path.basename(dir)}: ${describeResource(r)}: ${errorMessage(err)}`);
    }
  }
  // Mounts the record missed (a crash between mount and record) are found in mountinfo.
  for (const m of await mountsUnder(dir)) {
    try {
      await unmount(m.mountPoint);
    } catch (err) {
      ok = false;
      report.errors.push(`${path.basename(dir)}: umount ${m.mountPoint}: ${errorMessage(err)}`);
    }
  }
  if (!ok) {
    await unlink(path.join(dir, "reaper.lock")).catch(() => {});
    return;
  }
  await removeRunDir(dir);
  report.cleaned.push(path.basename(dir));
}
