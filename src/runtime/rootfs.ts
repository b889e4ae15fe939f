import { mkdir, stat } from "node:fs/promises";
import { attachLoop, fileIdentity, setLoopAutoclear } from "../host/loop.js";
import { mount } from "../host/mounts.js";
import { KindlingError } from "../util/errors.js";
import type { Scope } from "../util/scope.js";
import { trace } from "../util/trace.js";
import type { Resource } from "./resources.js";
import type { RunDir } from "./rundir.js";
import type { BlockImageProvider, OpenBlockImage } from "./types.js";

/** A block image that is a plain file (a SquashFS built by a test, or a fully local image). */
export class FileBlockImage implements BlockImageProvider {
  constructor(readonly file: string) {}
  get description(): string {
    return `image file ${this.file}`;
  }
  async open(): Promise<OpenBlockImage> {
    try {
      if (!(await stat(this.file)).isFile()) throw new Error("not a file");
    } catch {
      throw new KindlingError(`block image ${this.file} is not a readable file`);
    }
    return { path: this.file, close: async () => {} };
  }
}

/** The directories of an overlay rootfs inside a run dir. */
export interface OverlayRootfs {
  /** The merged directory: the container's root. */
  merged: string;
  /** The writable layer: what the container changed. */
  upper: string;
  /** The opened block image (e.g. to ask it about read failures). */
  image: OpenBlockImage;
}

/** The read-only lower layer of an overlay rootfs: the image's SquashFS, mounted. */
export interface RootfsLower {
  /** Where the SquashFS is mounted (the image's shared mount, or the run's own). */
  dir: string;
  image: OpenBlockImage;
  /** Work still under way on the lower layer (a loop device's autoclear): settled with the overlay. */
  pending?: Promise<void>;
}

/**
 * lower = the image's SquashFS, read-only, through a read-only loop device on the block image file;
 * upper/work = per-container directories in the run dir; merged = `mergedDir`. Each step is held by
 * the run dir (owner.json) and released by `scope`, in reverse.
 */
export async function mountOverlayRootfs(
  runDir: RunDir,
  scope: Scope,
  blockImage: BlockImageProvider,
  mergedDir: string,
): Promise<OverlayRootfs> {
  return mountOverlay(runDir, scope, await openRootfsLower(runDir, scope, blockImage), mergedDir);
}

/**
 * The lower layer: the image's shared SquashFS mount when its provider keeps one (warm lazy images),
 * else a loop device and a SquashFS mount of the run's own. Files of the image can be read from
 * `dir` while the overlay is being mounted (oci-runtime.ts reads /etc/passwd there meanwhile).
 */
export async function openRootfsLower(
  runDir: RunDir,
  scope: Scope,
  blockImage: BlockImageProvider,
): Promise<RootfsLower> {
  // overlayfs splits its options on "," and lowerdir on ":": such paths cannot be passed.
  if (/[,:]/.test(runDir.path)) {
    throw new KindlingError(`KINDLING_HOME path ${runDir.path} must not contain "," or ":" (overlayfs)`);
  }
  const image = await blockImage.open({ mounted: true });
  scope.defer(`block image ${blockImage.description}`, () => image.close());
  trace("rootfs: block image opened");
  // The image's SquashFS is mounted already, shared by its containers: only the overlay is ours.
  if (image.mountedAt) return { dir: image.mountedAt, image };

  const lower = runDir.file("lower");
  await mkdir(lower, { recursive: true });
  const identity = await fileIdentity(image.path);
  const device = await attachLoop(image.path);
  const loop: Resource = { kind: "loop", device, file: image.path, identity };
  await runDir.hold(scope, loop);

  await runDir.hold(scope, { kind: "mount", target: lower });
  try {
    await mount("squashfs", device, lower, "ro");
  } catch (err) {
    const why = (await image.problem?.().catch(() => undefined)) ?? (err as Error).message;
    throw new KindlingError(`cannot mount ${blockImage.description} as SquashFS: ${why}`);
  }
  // In parallel with the overlay, off the critical path: once autoclear is set, unmounting the
  // squashfs frees the loop device (mountOverlay settles both, so cleanup knows which happened).
  const pending = setLoopAutoclear(device).then(() => runDir.update(loop, { autoclear: true }));
  pending.catch(() => {});
  return { dir: lower, image, pending };
}

/** An overlay's directories: the image's lower, and the run's upper and work (in the run dir). */
export interface OverlayLayers {
  lower: string;
  upper: string;
  work: string;
}

/**
 * The per-run overlay's directories on `lower`, and the empty `mergedDir`, made but not mounted:
 * for a runtime that mounts the overlay itself (runc, in the container's mount namespace).
 */
export async function overlayLayers(
  runDir: RunDir,
  lower: RootfsLower,
  mergedDir: string,
): Promise<OverlayLayers> {
  const upper = runDir.file("upper");
  const work = runDir.file("work");
  await Promise.all([upper, work, mergedDir].map((d) => mkdir(d, { recursive: true })));
  await lower.pending;
  return { lower: lower.dir, upper, work };
}

/** The per-run overlay (upper/work in the run dir) on `lower`, mounted on the host at `mergedDir`. */
export async function mountOverlay(
  runDir: RunDir,
  scope: Scope,
  lower: RootfsLower,
  mergedDir: string,
): Promise<OverlayRootfs> {
  const upper = runDir.file("upper");
  const work = runDir.file("work");
  await Promise.all([upper, work, mergedDir].map((d) => mkdir(d, { recursive: true })));
  await runDir.hold(scope, { kind: "mount", target: mergedDir });
  const [overlay, pending] = await Promise.allSettled([
    mount("overlay", "overlay", mergedDir, `lowerdir=${lower.dir},upperdir=${upper},workdir=${work}`),
    lower.pending,
  ]);
  if (overlay.status === "rejected") throw overlay.reason;
  if (pending.status === "rejected") throw pending.reason;
  trace("rootfs: overlay mounted");
  return { merged: mergedDir, upper, image: lower.image };
}
