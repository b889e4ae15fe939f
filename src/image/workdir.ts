import { mkdtemp, readdir, rm, stat, statfs } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { config } from "../config/index.js";
import { isSameProcess } from "../host/process.js";

const SHM = "/dev/shm";
/** Largest tree built on tmpfs (KINDLING_BUILD_TMPFS_MAX overrides, in bytes). */
const maxTmpfsTree = () => config().buildTmpfsMaxBytes;
const PREFIX = "kindling-build-";

export interface TreeDir {
  dir: string;
  /** File bytes the tree may hold here. */
  maxBytes: number;
  tmpfs: boolean;
}

async function freeBytes(dir: string): Promise<number> {
  const fs = await statfs(dir);
  return fs.bavail * fs.bsize;
}

/**
 * Where to materialize an image's tree. Applying layers creates thousands of small files, and on
 * this machine's disk that is metadata-bound (GNU tar: ~8 s for Debian minbase on ext4, 0.2 s on
 * tmpfs). So the tree goes to tmpfs when it likely fits in memory (`estimate` bytes); if it then
 * grows past its budget, the caller retries on disk (onDisk). Names carry our pid so a later run
 * can sweep what a killed one left (sweepStaleTrees).
 */
export async function makeTreeDir(diskParent: string, estimate: number): Promise<TreeDir> {
  if (config().buildTmpfs && estimate <= maxTmpfsTree() && estimate * 4 <= os.freemem()) {
    try {
      if ((await stat(SHM)).isDirectory()) {
        const budget = Math.min(maxTmpfsTree(), os.freemem() / 4, (await freeBytes(SHM)) / 2);
        if (budget > estimate) {
          return {
            dir: await mkdtemp(path.join(SHM, `${PREFIX}${process.pid}-`)),
            maxBytes: budget,
            tmpfs: true,
          };
        }
      }
    } catch {
      // no usable tmpfs: use the disk
    }
  }
  return onDisk(diskParent);
}

/** A tree dir next to the store; it may use all but 1 GiB of the free space. */
export async function onDisk(diskParent: string): Promise<TreeDir> {
  const dir = await mkdtemp(path.join(diskParent, `${PREFIX}${process.pid}-`));
  return { dir, maxBytes: Math.max(0, (await freeBytes(diskParent)) - 1024 ** 3), tmpfs: false };
}

/** Removes build trees (and other kindling temp dirs) left by processes that no longer exist. */
export async function sweepStaleTrees(dirs: string[]): Promise<void> {
  for (const parent of dirs) {
    let names: string[];
    try {
      names = await readdir(parent);
    } catch {
      continue;
    }
    for (const name of names) {
      const m = /^kindling-(?:build|import|export)-(\d+)-/.exec(name);
      if (m && !isSameProcess(Number(m[1])))
        await rm(path.join(parent, name), { recursive: true, force: true });
    }
  }
}

/** A temp dir under `parent` named so sweepStaleTrees can find it if we die. */
export function makeTempDir(parent: string, kind: "build" | "import" | "export"): Promise<string> {
  return mkdtemp(path.join(parent, `kindling-${kind}-${process.pid}-`));
}

export const TMPFS_DIR = SHM;
