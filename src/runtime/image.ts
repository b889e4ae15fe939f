import { stat } from "node:fs/promises";
import type { ImageRecord, RunConfig } from "../image/types.js";
import type { BlockIndex, ChunkSource, Digest } from "../store/types.js";
import { errorMessage, KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { DEFAULT_PATH } from "./process.js";
import { FileBlockImage } from "./rootfs.js";
import type { BlockImageProvider, ResolvedImage } from "./types.js";

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
  const store = await importModule<StoreModule>("../store/catalog.js");
  const record = await store.loadImage(home, ref);
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
  async open(): Promise<{ path: string; close(): Promise<void> }> {
    const index = await (await importModule<BlockIndexModule>("../store/blockindex.js")).readBlockIndex(
      this.home,
      this.record.digest,
    );
    const lazy = await importModule<LazyModule>("../lazy/index.js");
    return lazy.openLazyImage(this.home, this.record, index, "auto");
  }
}

// The image pipeline and the lazy file are built alongside this module; they are loaded at run
// time so `run` with a SquashFS file works before (and without) them.
interface StoreModule {
  loadImage(home: KindlingHome, name: string): Promise<ImageRecord>;
}
interface BlockIndexModule {
  readBlockIndex(home: KindlingHome, digest: Digest): Promise<BlockIndex>;
}
interface LazyModule {
  openLazyImage(
    home: KindlingHome,
    record: ImageRecord,
    index: BlockIndex,
    source: ChunkSource | "auto",
  ): Promise<{ path: string; close(): Promise<void> }>;
}

async function importModule<T>(specifier: string): Promise<T> {
  try {
    return (await import(new URL(specifier, import.meta.url).href)) as T;
  } catch (err) {
    throw new KindlingError(`images by name need ${specifier} (${errorMessage(err)})`);
  }
}
