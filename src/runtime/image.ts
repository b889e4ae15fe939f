import { stat } from "node:fs/promises";
import type { ImageRecord, RunConfig } from "../image/types.js";
import { openLazyImage } from "../lazy/index.js";
import { readBlockIndex } from "../store/blockindex.js";
import { loadImage } from "../store/catalog.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { DEFAULT_PATH } from "./process.js";
import { FileBlockImage } from "./rootfs.js";
import type { BlockImageProvider, OpenBlockImage, ResolvedImage } from "./types.js";

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The config of an image given as a bare SquashFS file: no ENTRYPOINT/CMD, so a command is needed. */
export const BARE_CONFIG: RunConfig = {
  entrypoint: [],
  cmd: [],
  env: [`PATH=${DEFAULT_PATH}`],
  workingDir: "/",
  user: "",
};

/** An IMAGE that is a path (starts with "/" or "."), not a name: image names never do. */
export function isPathRef(ref: string): boolean {
  return ref.startsWith("/") || ref.startsWith("./") || ref.startsWith("../");
}

/**
 * Resolves `kindling run`'s IMAGE: a name in the catalog (its lazy block image), or the path of a
 * SquashFS file (for tests and benchmarks: run without importing an image).
 */
export async function resolveImage(home: KindlingHome, ref: string): Promise<ResolvedImage> {
  if (isPathRef(ref)) {
    try {
      if (!(await stat(ref)).isFile()) throw new Error();
    } catch {
      throw new KindlingError(`image file ${ref} does not exist or is not a file`);
    }
    return { name: ref, config: BARE_CONFIG, blockImage: new FileBlockImage(ref) };
  }
  const record = await loadImage(home, ref);
  return { name: record.name, config: record.config, blockImage: new LazyBlockImage(home, record) };
}

/** The image's block image as the lazy FUSE file (src/lazy), fetching chunks on first read. */
export class LazyBlockImage implements BlockImageProvider {
  constructor(
    private readonly home: KindlingHome,
    private readonly record: ImageRecord,
  ) {}
  get description(): string {
    return `image ${this.record.name} (${this.record.digest})`;
  }
  async open(): Promise<OpenBlockImage> {
    const index = await readBlockIndex(this.home, this.record.digest);
    const lazy = await openLazyImage(this.home, this.record, index, "auto");
    const name = this.record.name;
    return {
      path: lazy.path,
      close: () => lazy.close(),
      problem: async () => {
        if (!isAlive(lazy.pid))
          return `the lazy image daemon of ${name} (pid ${lazy.pid}) died during the run`;
        const stats = await lazy.stats().catch(() => undefined);
        if (stats && stats.readErrors > 0) {
          return `${stats.readErrors} read(s) of image ${name} failed (EIO after ${stats.fetchErrors} failed fetch(es), ${stats.verifyFailures} corrupt chunk(s))`;
        }
        return undefined;
      },
    };
  }
}
