/**
 * The four --rootfs strategies for microVMs. Each turns the image and the -v mounts into drives, shares,
 * the guest's root and CONFIGURE mounts; every host resource is held by the run dir (docs/rootfs-strategies.md).
 */
import path from "node:path";
import { KindlingError } from "../../util/errors.js";
import { Scope } from "../../util/scope.js";
import type { GuestMount } from "../../vm/agent/protocol.js";
import { mountOverlayRootfs } from "../rootfs.js";
import type { OpenBlockImage, RootfsStrategy } from "../types.js";
import { DriveTable } from "./drives.js";
import { bindMount, bindVolumesInto } from "./hostmounts.js";
import { ext4Size, mkfsExt4, mksquashfs, NOTE_SQUASHFS_FLAGS, treeUsage } from "./images.js";
import type { RootfsPlan, RootfsRequest } from "./types.js";
import { readImageUsers, readUserDb } from "./users.js";
import { attachVolumes, GUEST_HELPER_DIR } from "./volumes.js";

export const ROOT_TAG = "kindling-root";
export const VOLUMES_TAG = "kindling-volumes";

/** Builds the plan for `strategy`. Everything acquired is released by req.scope. */
export async function prepareRootfs(strategy: RootfsStrategy, req: RootfsRequest): Promise<RootfsPlan> {
  switch (strategy) {
    case "lazy":
      return lazyRootfs(req);
    case "squashfs":
      return squashfsRootfs(req);
    case "copy":
      return copyRootfs(req);
    case "virtiofs":
      return virtiofsRootfs(req);
  }
}

/** The writable layer: a sparse ext4 scratch drive with --disk, else tmpfs limited to half the VM's memory. */
async function writable(
  req: RootfsRequest,
  table: DriveTable,
): Promise<Pick<RootfsPlan, "scratch" | "tmpfsSize">> {
  if (req.diskBytes === undefined) return { tmpfsSize: `${Math.max(1, Math.floor(req.memoryMiB / 2))}m` };
  const file = req.runDir.file("scratch.ext4");
  await mkfsExt4(file, { bytes: req.diskBytes }, { journal: true });
  return { scratch: table.add("scratch", file, false) };
}

/** Default: drive 0 is the image's lazy block file, shared by every VM of the image; per run only the -v drives. */
async function lazyRootfs(req: RootfsRequest): Promise<RootfsPlan> {
  const table = new DriveTable();
  const image = await req.image.blockImage.open();
  req.scope.defer(`block image ${req.image.blockImage.description}`, () => image.close());
  const root = table.add("rootfs", image.path, true, true);
  const users = await readImageUsers(image.path);
  const layer = await writable(req, table);
  const mounts = await attachVolumes(req, table, req.volumes);
  table.check(req.vmm, 0, 0, req.nics);
  return {
    drives: table.drives,
    shares: [],
    root: { root, rootfsType: "squashfs" },
    ...layer,
    mounts,
    users,
    imageProblem: problemOf(image),
  };
}

/** The image's own account of failed reads (a dead lazy daemon, bad chunks), when it has one. */
function problemOf(image: OpenBlockImage): () => Promise<string | undefined> {
  return async () => image.problem?.().catch(() => undefined);
}

/** Runs a build step that reads the whole image; its failure names the image's problem when there is one. */
async function readingImage<T>(image: OpenBlockImage, step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (err) {
    const problem = await problemOf(image)();
    if (!problem) throw err;
    throw new KindlingError(`${(err as Error).message.split("\n")[0]} (${problem})`);
  }
}

/**
 * The design note's approach, exactly: overlay of the image with a per-run upper, -v sources bound into
 * the merged directory, `mksquashfs` with the note's flags, binds and overlay undone, the SquashFS
 * attached read-only as root. Writes to rw mounts stay in the VM: they are lost (warned).
 */
async function squashfsRootfs(req: RootfsRequest): Promise<RootfsPlan> {
  for (const v of req.volumes.filter((x) => !x.readOnly)) {
    req.warn(
      `warning: --rootfs squashfs bakes -v ${v.source}:${v.destination} into a read-only image: ` +
        "the container's writes to it are lost (use --rootfs lazy to keep them)",
    );
  }
  const file = req.runDir.file("rootfs.squashfs");
  const users = await Scope.with(async (build) => {
    const { merged, image } = await mergedWithVolumes(req, build, req.volumes);
    const db = await readUserDb(merged);
    await readingImage(image, () => mksquashfs(merged, file, NOTE_SQUASHFS_FLAGS));
    return db;
  });
  const table = new DriveTable();
  const root = table.add("rootfs", file, true, true);
  const layer = await writable(req, table);
  table.check(req.vmm, 0, 0, req.nics);
  return {
    drives: table.drives,
    shares: [],
    root: { root, rootfsType: "squashfs" },
    ...layer,
    mounts: [],
    users,
  };
}

/**
 * The note's old path: an ext4 image sized to fit (du + headroom, inodes), filled with the merged image
 * and the read-only -v mounts by `mkfs.ext4 -d`. rw mounts go to a synced-back drive as with lazy.
 */
async function copyRootfs(req: RootfsRequest): Promise<RootfsPlan> {
  const file = req.runDir.file("rootfs.ext4");
  const ro = req.volumes.filter((v) => v.readOnly);
  const users = await Scope.with(async (build) => {
    const { merged, image } = await mergedWithVolumes(req, build, ro);
    const db = await readUserDb(merged);
    await readingImage(image, async () =>
      mkfsExt4(file, ext4Size(await treeUsage(merged)), { fromDir: merged, journal: false }),
    );
    return db;
  });
  const table = new DriveTable();
  const root = table.add("rootfs", file, true, true);
  const layer = await writable(req, table);
  const mounts = await attachVolumes(
    req,
    table,
    req.volumes.filter((v) => !v.readOnly),
  );
  table.check(req.vmm, 0, 0, req.nics);
  return { drives: table.drives, shares: [], root: { root, rootfsType: "ext4" }, ...layer, mounts, users };
}

/**
 * The note's phase 2 (QEMU only): the overlay's merged directory shared through virtiofsd as the guest's
 * root. -v mounts are bound into a second share and bound into place in the guest, so rw mounts are live
 * (the guest stacks its own overlay on the root share, which would keep writes inside the VM).
 */
async function virtiofsRootfs(req: RootfsRequest): Promise<RootfsPlan> {
  if (!req.vmm.traits.shares) {
    throw new KindlingError(
      "--rootfs virtiofs needs --runtime qemu: Firecracker has no virtio-fs (see `kindling doctor`)",
    );
  }
  const ov = await mountOverlayRootfs(req.runDir, req.scope, req.image.blockImage, req.runDir.file("merged"));
  const merged = ov.merged;
  const users = await readUserDb(merged);
  const shares = [{ tag: ROOT_TAG, source: merged }];
  const mounts: GuestMount[] = [];
  if (req.volumes.length > 0) {
    const dir = req.runDir.file("volumes");
    for (const [i, v] of req.volumes.entries()) {
      await bindMount(req.runDir, req.scope, v.source, path.join(dir, String(i)), v.readOnly);
    }
    shares.push({ tag: VOLUMES_TAG, source: dir });
    const at = `${GUEST_HELPER_DIR}/volumes`;
    mounts.push({ kind: "virtiofs", source: VOLUMES_TAG, target: at });
    const binds = req.volumes.map((v, i) => ({ v, i }));
    binds.sort((a, b) => a.v.destination.split("/").length - b.v.destination.split("/").length);
    for (const { v, i } of binds) {
      mounts.push({ kind: "bind", source: `${at}/${i}`, target: v.destination, readOnly: v.readOnly });
    }
    mounts.push(
      { kind: "detach", source: "", target: at },
      { kind: "detach", source: "", target: GUEST_HELPER_DIR },
    );
  }
  const table = new DriveTable();
  const layer = await writable(req, table);
  table.check(req.vmm, shares.length, 0, req.nics);
  return {
    drives: table.drives,
    shares,
    root: { root: ROOT_TAG, rootfsType: "virtiofs" },
    ...layer,
    mounts,
    users,
    imageProblem: problemOf(ov.image),
  };
}

/** The overlay of the image (per-run upper in the run dir) with `volumes` bound in; released by `scope`. */
async function mergedWithVolumes(
  req: RootfsRequest,
  scope: Scope,
  volumes: RootfsRequest["volumes"],
): Promise<{ merged: string; image: OpenBlockImage }> {
  const ov = await mountOverlayRootfs(req.runDir, scope, req.image.blockImage, req.runDir.file("merged"));
  await bindVolumesInto(req.runDir, scope, ov.merged, volumes);
  return { merged: ov.merged, image: ov.image };
}
