import { mkdir, stat } from "node:fs/promises";
import { attachLoop, fileIdentity, setLoopAutoclear } from "../host/loop.js";
import { mount } from "../host/mounts.js";
import { KindlingError } from "../util/errors.js";
import type { Scope } from "../util/scope.js";
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
  const lower = runDir.file("lower");
  const upper = runDir.file("upper");
  const work = runDir.file("work");
  // overlayfs splits its options on "," and lowerdir on ":": such paths cannot be passed.
  if (/[,:]/.test(runDir.path)) {
    throw new KindlingError(`KINDLING_HOME path ${runDir.path} must not contain "," or ":" (overlayfs)`);
  }
  await Promise.all([lower, upper, work, mergedDir].map((d) => mkdir(d, { recursive: true })));

  const image = await blockImage.open({ mounted: true });
  scope.defer(`block image ${blockImage.description}`, () => image.close());
  if (image.mountedAt) {
    // The image's SquashFS is mounted already, shared by its containers: only the overlay is ours.
    await runDir.hold(scope, { kind: "mount", target: mergedDir });
    const lowerdir = image.mountedAt;
    await mount("overlay", "overlay", mergedDir, `lowerdir=${lowerdir},upperdir=${upper},workdir=${work}`);
    return { merged: mergedDir, upper, image };
  }

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

  await runDir.hold(scope, { kind: "mount", target: mergedDir });
  // In parallel, off the critical path: once autoclear is set, unmounting the squashfs frees the
  // loop device. Both settle before a failure is thrown, so cleanup knows which one happened.
  const [overlay, autoclear] = await Promise.allSettled([
    mount("overlay", "overlay", mergedDir, `lowerdir=${lower},upperdir=${upper},workdir=${work}`),
    setLoopAutoclear(device).then(() => runDir.update(loop, { autoclear: true })),
  ]);
  if (overlay.status === "rejected") throw overlay.reason;
  if (autoclear.status === "rejected") throw autoclear.reason;
  return { merged: mergedDir, upper, image };
}
