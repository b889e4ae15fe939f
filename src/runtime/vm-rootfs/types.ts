import type { Scope } from "../../util/scope.js";
import type { GuestMount } from "../../vm/agent/protocol.js";
import type { DriveSpec, ShareSpec } from "../../vm/spec.js";
import type { Vmm } from "../../vm/vmm.js";
import type { RunDir } from "../rundir.js";
import type { ResolvedImage, VolumeSpec } from "../types.js";
import type { UserDb } from "../users.js";

/** How -v mounts reach a guest that sees only block devices: all in two drives, or one drive each. */
export type MountPacking = "pack" | "per-mount";
export const MOUNT_PACKINGS: readonly MountPacking[] = ["pack", "per-mount"];

/** What a rootfs strategy needs to know about one run. */
export interface RootfsRequest {
  runDir: RunDir;
  /** Releases everything the strategy acquires, in reverse, on every path. */
  scope: Scope;
  image: ResolvedImage;
  volumes: VolumeSpec[];
  /** The backend: its traits decide what a plan may use (shares, how many devices). */
  vmm: Pick<Vmm, "name" | "traits">;
  /** VM memory: the tmpfs writable layer gets half of it. */
  memoryMiB: number;
  /** `--disk`: bytes of a sparse ext4 scratch drive for the writable layer instead of tmpfs. */
  diskBytes?: number;
  packing: MountPacking;
  /** Network cards the VM gets (0 or 1): each takes a device slot, as drives do. */
  nics: number;
  /** Warnings for the user (stderr). */
  warn(message: string): void;
}

/** The guest's root: a drive (by its guest device name) or a virtio-fs tag. */
export interface GuestRoot {
  root: string;
  rootfsType: "squashfs" | "ext4" | "virtiofs";
}

/** Everything a strategy produces for the VM: drives, shares, boot options, CONFIGURE mounts. */
export interface RootfsPlan {
  drives: DriveSpec[];
  shares: ShareSpec[];
  root: GuestRoot;
  /** kindling.scratch= (a drive) or kindling.tmpfs_size= */
  scratch?: string;
  tmpfsSize?: string;
  mounts: GuestMount[];
  /** The image's users (for -u NAME and HOME), read on the host. */
  users: UserDb;
  /** For a root read from the image during the run (lazy, virtiofs): what went wrong serving it, if anything. */
  imageProblem?: () => Promise<string | undefined>;
}
