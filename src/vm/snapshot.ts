/**
 * VM snapshots (docs/vm-start.md): a VM booted to its agent's READY with no drive read and nothing of a
 * container in it, saved once and restored by later runs. The store owns $KINDLING_HOME/snapshots:
 *   <key>/state       the VMM's saved state (QEMU: its migration stream)
 *   <key>/meta.json   what the key was made of, the guest's READY, sizes
 *   .tmp-<key>-<pid>-<rand>/   a snapshot being written: renamed to <key> when complete
 *   digests.json      sha256 of kernel/initramfs files by their stat identity (hashing costs per run)
 * The key is a digest of everything that must match for a restore to be valid: the snapshot format, the
 * VMM binary, the kernel's and the initramfs' (the init's) contents, the accelerator and the VMM's device
 * configuration with per-container paths taken out. Any change gives a new key: a stale snapshot is never
 * found, and the store keeps only the most recently used few.
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, stat, utimes } from "node:fs/promises";
import path from "node:path";
import { isSameProcess } from "../host/process.js";
import { writeFileAtomic } from "../util/atomic.js";
import type { ReadyInfo } from "./agent/client.js";

/** Bumped when what a snapshot holds or how it is restored changes: older snapshots are then unused. */
export const SNAPSHOT_FORMAT = 1;
/** Snapshots kept per home (least recently used go first); each is the guest's touched memory, ~10-50 MB. */
export const SNAPSHOTS_KEPT = 6;

/** The guest init's options that differ per container: sent in SETUP after a restore, never snapshotted. */
export const CONTAINER_OPTIONS = [
  "kindling.root",
  "kindling.rootfstype",
  "kindling.tmpfs_size",
  "kindling.scratch",
] as const;

/** A kernel command line split into what a snapshot may hold and this container's kindling.* options. */
export function splitContainerOptions(cmdline: string): { fixed: string; options: string[] } {
  const words = cmdline.split(/\s+/).filter(Boolean);
  const isContainer = (w: string) => CONTAINER_OPTIONS.some((o) => w.startsWith(`${o}=`));
  return {
    fixed: words.filter((w) => !isContainer(w)).join(" "),
    options: words.filter(isContainer),
  };
}

/** What a snapshot's key is made of; stored in its meta.json and compared again before a restore. */
export interface SnapshotInputs {
  format: number;
  /** the VMM binary: path, size, mtime (a new QEMU may not load an old stream) */
  vmm: string;
  kernelSha256: string;
  initrdSha256: string;
  accel: string;
  /** the VMM's arguments with per-container paths replaced by placeholders */
  args: string[];
}

export function snapshotKey(inputs: SnapshotInputs): string {
  return createHash("sha256").update(JSON.stringify(inputs)).digest("hex").slice(0, 32);
}

export interface SnapshotMeta {
  key: string;
  inputs: SnapshotInputs;
  ready: ReadyInfo;
  createdAt: string;
  stateBytes: number;
  /** spawn -> READY of the boot that made it, ms */
  bootMs: number;
}

export interface FoundSnapshot {
  statePath: string;
  meta: SnapshotMeta;
}

/** A snapshot being written: commit() publishes it, abort() removes it. */
export interface SnapshotWriter {
  readonly statePath: string;
  commit(meta: Omit<SnapshotMeta, "stateBytes" | "createdAt">): Promise<FoundSnapshot>;
  abort(): Promise<void>;
}

export class SnapshotStore {
  constructor(readonly dir: string) {}

  /** The snapshot for `key`, if one is complete and was made of the same inputs. Marks it used. */
  async find(key: string, inputs: SnapshotInputs): Promise<FoundSnapshot | undefined> {
    const dir = path.join(this.dir, key);
    const meta = await readFile(path.join(dir, "meta.json"), "utf8")
      .then((t) => JSON.parse(t) as SnapshotMeta)
      .catch(() => undefined);
    if (!meta || JSON.stringify(meta.inputs) !== JSON.stringify(inputs)) return undefined;
    const statePath = path.join(dir, "state");
    const st = await stat(statePath).catch(() => undefined);
    if (!st || st.size !== meta.stateBytes) return undefined;
    const now = new Date();
    await utimes(path.join(dir, "meta.json"), now, now).catch(() => {});
    return { statePath, meta };
  }

  /** Removes the snapshot of `key` (one that did not restore). */
  async discard(key: string): Promise<void> {
    await rm(path.join(this.dir, key), { recursive: true, force: true });
  }

  /** A temp dir for a new snapshot of `key` (several runs may write one at once: the first rename wins). */
  async begin(key: string): Promise<SnapshotWriter> {
    await mkdir(this.dir, { recursive: true });
    const tmp = path.join(this.dir, `.tmp-${key}-${process.pid}-${randomBytes(3).toString("hex")}`);
    await mkdir(tmp);
    const statePath = path.join(tmp, "state");
    const final = path.join(this.dir, key);
    return {
      statePath,
      abort: () => rm(tmp, { recursive: true, force: true }),
      commit: async (m) => {
        const meta: SnapshotMeta = {
          ...m,
          createdAt: new Date().toISOString(),
          stateBytes: (await stat(statePath)).size,
        };
        await writeFileAtomic(path.join(tmp, "meta.json"), `${JSON.stringify(meta, null, 2)}\n`);
        try {
          await rename(tmp, final);
        } catch {
          // another run published this key first (or an unreadable leftover is there): replace a bad one
          await rm(tmp, { recursive: true, force: true });
          const theirs = await this.find(key, meta.inputs);
          if (theirs) return theirs;
          throw new Error(`cannot publish snapshot ${key}`);
        }
        await this.prune().catch(() => {});
        return { statePath: path.join(final, "state"), meta };
      },
    };
  }

  /** Keeps the SNAPSHOTS_KEPT most recently used snapshots; removes temp dirs of writers that died. */
  async prune(keep = SNAPSHOTS_KEPT): Promise<void> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const done: { name: string; used: number }[] = [];
    for (const name of names) {
      const tmp = /^\.tmp-[0-9a-f]+-(\d+)-/.exec(name);
      if (tmp) {
        if (!isSameProcess(Number(tmp[1])))
          await rm(path.join(this.dir, name), { recursive: true, force: true });
        continue;
      }
      if (!/^[0-9a-f]{32}$/.test(name)) continue;
      const st = await stat(path.join(this.dir, name, "meta.json")).catch(() => undefined);
      done.push({ name, used: st?.mtimeMs ?? 0 });
    }
    done.sort((a, b) => b.used - a.used);
    for (const old of done.slice(keep))
      await rm(path.join(this.dir, old.name), { recursive: true, force: true });
  }

  /**
   * sha256 of a file (kernel, initramfs), remembered by its stat identity (device, inode, size, mtime) in
   * digests.json: a changed file has a new identity and is hashed again.
   */
  async fileDigest(file: string): Promise<string> {
    const st = await stat(file);
    const id = `${file}:${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}`;
    const known = memo.get(id);
    if (known) return known;
    const cacheFile = path.join(this.dir, "digests.json");
    const cache = await readFile(cacheFile, "utf8")
      .then((t) => JSON.parse(t) as Record<string, string>)
      .catch(() => ({}) as Record<string, string>);
    let digest = cache[id];
    if (!digest) {
      const h = createHash("sha256");
      for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
      digest = h.digest("hex");
      // only live entries: the files of a removed kernel do not pile up
      const kept: Record<string, string> = { [id]: digest };
      for (const [k, v] of Object.entries(cache).slice(-15)) kept[k] = v;
      await mkdir(this.dir, { recursive: true });
      await writeFileAtomic(cacheFile, JSON.stringify(kept)).catch(() => {});
    }
    memo.set(id, digest);
    return digest;
  }
}

const memo = new Map<string, string>();
