import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, rm, stat } from "node:fs/promises";
import path from "node:path";
import { lazyUnmount, mountAt } from "../host/mounts.js";
import { isSameProcess, processStartTime, type StartTime } from "../host/process.js";
import type { ImageRecord } from "../store/types.js";
import { writeFileAtomic } from "../util/atomic.js";
import { errorMessage, KindlingError } from "../util/errors.js";
import { exec } from "../util/exec.js";
import type { KindlingHome } from "../util/home.js";
import { openLazyImage } from "./client.js";
import { stopDaemon } from "./stale.js";

/**
 * mnt/image-mounts/<hash of DIR>.json: what `image mount` set up, so `image umount` (or cleanup)
 * can undo it. Not under run/: every entry there is a run directory that `kindling run` reaps.
 */
export interface ImageMountRecord {
  dir: string;
  image: string;
  digest: string;
  /** The lazy daemon (detached) and its directory id under mnt/. */
  pid: number;
  startTime: StartTime;
  id: string;
  created: string;
}

export const recordsDir = (home: KindlingHome) => path.join(home.mounts, "image-mounts");
const recordPath = (home: KindlingHome, dir: string) =>
  path.join(recordsDir(home), `${createHash("sha256").update(dir).digest("hex").slice(0, 32)}.json`);

async function readRecord(file: string): Promise<ImageMountRecord | null> {
  try {
    return JSON.parse(await readFile(file, "utf8")) as ImageMountRecord;
  } catch {
    return null;
  }
}

/**
 * `kindling image mount N DIR`: the image's files, read-only, at DIR. The same lower mount as
 * runs use (lazy file -> loop device -> SquashFS, owned by the daemon: lower.ts), bound at DIR.
 * The daemon (detached) outlives this process; `image umount` or a later cleanup stops it.
 */
export async function mountImage(home: KindlingHome, record: ImageRecord, dir: string): Promise<void> {
  const target = path.resolve(dir);
  const recFile = recordPath(home, target);
  const old = await readRecord(recFile);
  if (old && (await mountAt(target)))
    throw new KindlingError(`${target} already has image ${old.image} mounted`);
  if (await mountAt(target)) throw new KindlingError(`${target} is already a mountpoint`);
  // A record without its mount (unmounted by hand): stop its daemon first.
  if (old) await release(home, old, true);
  await mkdir(target, { recursive: true });
  if (!(await stat(target)).isDirectory()) throw new KindlingError(`${target} is not a directory`);

  const lazy = await openLazyImage(home, record, "auto", { detached: true, lower: true });
  try {
    await exec("mount", ["--bind", lazy.lowerDir!, target]);
    await exec("mount", ["-o", "remount,bind,ro", target]);
    const rec: ImageMountRecord = {
      dir: target,
      image: record.name,
      digest: record.digest,
      pid: lazy.pid,
      startTime: processStartTime(lazy.pid) ?? 0,
      id: path.basename(lazy.dir),
      created: new Date().toISOString(),
    };
    await mkdir(recordsDir(home), { recursive: true });
    await writeFileAtomic(recFile, `${JSON.stringify(rec, null, 2)}\n`);
  } catch (err) {
    if (await mountAt(target)) await lazyUnmount(target);
    await lazy.close();
    throw new KindlingError(`cannot mount image ${record.name} at ${target}: ${errorMessage(err)}`);
  }
}

async function release(home: KindlingHome, rec: ImageMountRecord, lazy: boolean): Promise<void> {
  const m = await mountAt(rec.dir);
  if (m && m.fsType === "squashfs") {
    if (lazy) await lazyUnmount(rec.dir);
    else {
      const r = await exec("umount", [rec.dir], { allowFailure: true });
      if (r.code !== 0) {
        throw new KindlingError(`cannot unmount ${rec.dir}: ${r.stderr.trim() || `umount status ${r.code}`}`);
      }
    }
  }
  await stopDaemon(home, rec.id);
  await rm(recordPath(home, rec.dir), { force: true });
}

/** `kindling image umount DIR`: unmounts, detaches the loop device, stops the daemon. */
export async function umountImage(home: KindlingHome, dir: string): Promise<void> {
  const target = path.resolve(dir);
  const rec = await readRecord(recordPath(home, target));
  if (!rec) throw new KindlingError(`${target} is not an image mounted with 'kindling image mount'`);
  await release(home, rec, false);
}

/** Image mounts whose daemon died: detach the mount and the loop device, drop the record. */
export async function cleanupStaleImageMounts(home: KindlingHome): Promise<string[]> {
  const released: string[] = [];
  for (const f of await readdir(recordsDir(home)).catch(() => [] as string[])) {
    if (!f.endsWith(".json")) continue;
    const rec = await readRecord(path.join(recordsDir(home), f));
    if (!rec || isSameProcess(rec.pid, rec.startTime)) continue;
    await release(home, rec, true).catch(() => {});
    released.push(rec.dir);
  }
  return released;
}
