/**
 * Per-image lazy daemons owned by the service: after a container of a catalog image starts, the
 * service opens the image's shared lazy file too (a user of its daemon, as a container is), so the
 * daemon, its caches and (for runc/runsc) its SquashFS mount stay while the service runs, and a
 * "warm" run is warm however long ago the last one was. At most `max` images are held; the least
 * recently used is released (its daemon then leaves after its idle time, as without a service).
 */
import { isPathRef, resolveImage } from "../runtime/image.js";
import type { OpenBlockImage } from "../runtime/types.js";
import { errorMessage } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import type { LogFn } from "./events.js";

interface Held {
  image: string;
  open: Promise<OpenBlockImage | undefined>;
  lastUsed: number;
}

export class WarmImages {
  /** By image name and flavor: runc/runsc use the daemon that also mounts the SquashFS ("lower"). */
  private readonly held = new Map<string, Held>();

  constructor(
    private readonly home: KindlingHome,
    private readonly max: number,
    private readonly log: LogFn,
  ) {}

  get size(): number {
    return this.held.size;
  }

  /** Keeps the image's daemon running (the one a `runtime` container uses); evicts beyond the bound. */
  touch(image: string, runtime: string): void {
    if (this.max <= 0 || isPathRef(image)) return;
    const mounted = runtime === "runc" || runtime === "runsc";
    const key = `${image}\0${mounted}`;
    const known = this.held.get(key);
    if (known) {
      known.lastUsed = Date.now();
      return;
    }
    const open = resolveImage(this.home, image)
      .then((r) => r.blockImage.open({ mounted }))
      .catch((err) => {
        this.log("warn", "cannot keep the image's lazy daemon warm", { image, error: errorMessage(err) });
        this.held.delete(key);
        return undefined;
      });
    this.held.set(key, { image, open, lastUsed: Date.now() });
    while (this.held.size > this.max) {
      const [oldest] = [...this.held.entries()].sort((a, b) => a[1].lastUsed - b[1].lastUsed);
      void this.drop(oldest![0]);
    }
  }

  /** Stops holding the image (before `image rm`, which refuses an image in use). */
  async release(image: string): Promise<void> {
    await Promise.all(
      [...this.held.entries()].filter(([, h]) => h.image === image).map(([k]) => this.drop(k)),
    );
  }

  async releaseAll(): Promise<void> {
    await Promise.all([...this.held.keys()].map((k) => this.drop(k)));
  }

  private async drop(key: string): Promise<void> {
    const h = this.held.get(key);
    if (!h) return;
    this.held.delete(key);
    const open = await h.open;
    await open?.close().catch(() => {});
  }
}
