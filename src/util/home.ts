import { mkdirSync } from "node:fs";
import path from "node:path";

/**
 * Where Kindling keeps its state. Two different homes behave as two workers.
 *   blobs/sha256/<hex>   content-addressed chunks and block indexes (local store and chunk cache in one)
 *   images/<name>.json   the image catalog: name -> ImageRecord
 *   mnt/<digest>/        lazy FUSE mounts, one per image, shared by every container of that image
 *   run/<id>/            per-run state (bundle, overlay dirs, VM sockets); owner.json names the owning pid
 *   kernel/              the guest kernel, modules and initramfs
 *   snapshots/           VM snapshots (src/vm/snapshot.ts)
 *   tmp/                 temp files on the same filesystem, renamed into place when complete
 */
export class KindlingHome {
  readonly root: string;
  /** `root`: usually config().home (src/config sits above util: util imports nothing from it). */
  constructor(root: string) {
    this.root = path.resolve(root);
  }
  get blobs(): string {
    return path.join(this.root, "blobs", "sha256");
  }
  get images(): string {
    return path.join(this.root, "images");
  }
  get mounts(): string {
    return path.join(this.root, "mnt");
  }
  get runs(): string {
    return path.join(this.root, "run");
  }
  get kernel(): string {
    return path.join(this.root, "kernel");
  }
  get snapshots(): string {
    return path.join(this.root, "snapshots");
  }
  get tmp(): string {
    return path.join(this.root, "tmp");
  }
  /** Path of a blob given "sha256:<hex>". */
  blobPath(digest: string): string {
    const hex = digest.startsWith("sha256:") ? digest.slice(7) : digest;
    if (!/^[0-9a-f]{64}$/.test(hex)) throw new Error(`not a sha256 digest: ${digest}`);
    return path.join(this.blobs, hex);
  }
  ensure(): this {
    for (const dir of [this.blobs, this.images, this.mounts, this.runs, this.kernel, this.tmp]) {
      mkdirSync(dir, { recursive: true });
    }
    return this;
  }
}
