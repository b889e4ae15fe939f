import { mkdir, rm } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { attachLoop, detachLoop, isLoopAttached, setLoopAutoclear } from "../host/loop.js";
import { lazyUnmount, mount, mountAt } from "../host/mounts.js";
import { exec } from "../util/exec.js";
import type { DaemonDir } from "./daemondir.js";

/**
 * The image's SquashFS mounted read-only from a daemon's own lazy file, for the lower layer of
 * runc/runsc overlays: one loop device and one mount per image, shared by every container of it,
 * instead of one of each per container. The daemon that serves the file owns the mount.
 */
export async function mountLower(file: string, dir: string, opts: { directIo: boolean }): Promise<void> {
  await mkdir(dir, { recursive: true });
  const loop = await attachLoop(file, opts);
  try {
    await mount("squashfs", loop, dir, "ro");
  } catch (err) {
    await detachLoop(loop, file).catch(() => {});
    throw err;
  }
  // Autoclear: from now on the loop device goes away with the mount.
  await setLoopAutoclear(loop).catch(() => {});
}

/**
 * Unmounts it: at once when no overlay uses it, else detached (it goes with its last overlay).
 * Waits until the loop device is released, so a caller that checks for leftovers sees none.
 */
export async function unmountLower(dir: string): Promise<void> {
  const m = await mountAt(dir);
  if (!m) return;
  const r = await exec("umount", [dir], { allowFailure: true });
  if (r.code !== 0) {
    await lazyUnmount(dir);
    return;
  }
  const loop = path.basename(m.source);
  if (!/^loop\d+$/.test(loop)) return;
  for (let waited = 0; waited < 2000; waited += 10) {
    if (!(await isLoopAttached(loop))) return;
    await sleep(10);
  }
}

/**
 * A daemon's lower mounts, by generation. The kernel's SquashFS keeps a failed read in its caches
 * (a fragment that could not be read fails again, "Unable to read fragment cache entry", for as
 * long as the mount lives), so after any failed read the next runs must not get that mount: a
 * fresh one (new loop device, new SquashFS) becomes the current generation and the old one is
 * detached, to go with its last overlay. Runs that start meanwhile keep whatever they got.
 * A warm run pays nothing for this: it reads the current directory from state.json as before.
 */
export class LowerMounts {
  private gen = 0;
  private current_: string | undefined;
  private renewing: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly dir: DaemonDir,
    private readonly file: string,
    private readonly log: (msg: string) => void,
    /** Publishes a new current directory (the daemon rewrites state.json). */
    private readonly publish: (lower: string) => Promise<void>,
    /** The loop device reads the file with direct I/O (no kernel readahead on it: see daemon.ts). */
    private readonly loop: { directIo: boolean },
  ) {}

  get current(): string | undefined {
    return this.current_;
  }

  async mount(): Promise<string> {
    const dir = this.dir.lower(this.gen);
    await mountLower(this.file, dir, this.loop);
    this.current_ = dir;
    return dir;
  }

  /** A read of the file failed: the next runs get a fresh mount (once the burst is over). */
  readFailed(): void {
    if (this.closed || !this.current_) return;
    this.renewing ??= sleep(100)
      .then(() => this.renew())
      .catch((err) => this.log(`new lower mount: ${err instanceof Error ? err.message : err}`))
      .finally(() => {
        this.renewing = undefined;
      });
  }

  private async renew(): Promise<void> {
    if (this.closed) return;
    const old = this.current_!;
    const gen = this.gen + 1;
    const next = this.dir.lower(gen);
    try {
      await mountLower(this.file, next, this.loop);
    } catch (err) {
      // The superblock itself could not be read (source still down): the next failure tries again.
      await rm(next, { recursive: true, force: true }).catch(() => {});
      throw err;
    }
    this.gen = gen;
    this.current_ = next;
    await this.publish(next);
    this.log(`lower mount generation ${gen} at ${next} after a failed read`);
    await unmountLower(old);
    if (!(await mountAt(old))) await rm(old, { recursive: true, force: true }).catch(() => {});
  }

  /** Unmounts every generation (the SquashFS reads through our FUSE file: before it goes). */
  async closeAll(): Promise<void> {
    this.closed = true;
    await this.renewing;
    for (const lower of await this.dir.lowers()) await unmountLower(lower);
  }
}
