import { stat } from "node:fs/promises";
import { config } from "../config/index.js";
import { isSameProcess } from "../host/process.js";
import type { ImageRecord, RunConfig } from "../image/types.js";
import { openLazyImage, useRunningShared } from "../lazy/index.js";
import { loadImage } from "../store/catalog.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { DEFAULT_PATH } from "./process.js";
import { FileBlockImage } from "./rootfs.js";
import type { BlockImageProvider, OpenBlockImage, ResolvedImage } from "./types.js";

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

/** How long an image's shared lazy daemon stays after its last container (KINDLING_LAZY_IDLE_MS). */
export function lazyIdleMs(): number {
  return config().lazyIdleMs;
}

/**
 * The image's block image as the lazy FUSE file (src/lazy), fetching chunks on first read. One
 * daemon serves every container of the image in this home (`shared`): only the first run pays for
 * its start, and it leaves `lazyIdleMs()` after the last run ends (`image rm` stops it at once).
 * Asked for `mounted`, the daemon also keeps the image's SquashFS mounted, so runc/runsc runs need
 * only their overlay (one loop device per image, not per container).
 */
export class LazyBlockImage implements BlockImageProvider {
  constructor(
    private readonly home: KindlingHome,
    private readonly record: ImageRecord,
  ) {}
  get description(): string {
    return `image ${this.record.name} (${this.record.digest})`;
  }
  async open(opts: { mounted?: boolean } = {}): Promise<OpenBlockImage> {
    const lazyOpts = { shared: { idleMs: lazyIdleMs() }, lower: opts.mounted };
    // A warm start: the running daemon, without reading the block index (its size grows with the image).
    const lazy =
      (await useRunningShared(this.home, this.record, lazyOpts)) ??
      (await openLazyImage(this.home, this.record, "auto", lazyOpts));
    const name = this.record.name;
    // The daemon's counters cover every run it served: judge this run by what changed during it.
    // Asked now, awaited before the process starts (`ready`): the round trip to the daemon (a
    // signal, then its stats file) overlaps the overlay mount and the bundle (bench/cli-cost.ts).
    const asked = lazy.stats().catch(() => undefined);
    let before: Awaited<typeof asked>;
    const ready = asked.then((s) => {
      before = s;
    });
    return {
      path: lazy.path,
      ready,
      mountedAt: lazy.lowerDir,
      close: () => lazy.close(),
      holdFor: (pid) => lazy.holdFor(pid),
      problem: async () => {
        await ready;
        if (!isSameProcess(lazy.pid))
          return `the lazy image daemon of ${name} (pid ${lazy.pid}) died during the run`;
        const now = await lazy.stats().catch(() => undefined);
        if (!now) return undefined;
        const since = (key: "readErrors" | "fetchErrors" | "verifyFailures" | "fetchesRefused") =>
          now[key] - (before?.[key] ?? 0);
        // One message that says why: the source not answering, the cache full, or the counts.
        if (since("readErrors") > 0) {
          const why = now.sourceDown ?? now.cacheFull;
          const counts = `EIO after ${since("fetchErrors")} failed fetch(es), ${since("fetchesRefused")} refused while the source was down, ${since("verifyFailures")} corrupt chunk(s)`;
          return `${since("readErrors")} read(s) of image ${name} failed (${counts})${why ? `: ${why}` : ""}`;
        }
        if (now.cacheFull) return now.cacheFull;
        return undefined;
      },
    };
  }
}
