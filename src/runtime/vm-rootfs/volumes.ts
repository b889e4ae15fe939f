/**
 * -v mounts for a guest that sees only block devices. Read-only mounts go into a SquashFS drive, rw mounts
 * into a sparse ext4 drive that is synced back to the host after the VM (syncback.ts). Packed (default):
 * one drive of each kind holding every mount as a subdirectory (or file) `<i>`; per-mount: one drive per
 * mount. The guest mounts each drive at a helper directory, binds the entries to their targets, then
 * detaches the helper (CONFIGURE mount kinds block, bind, detach: docs/guest.md).
 */
import { mkdir, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { exec } from "../../util/exec.js";
import type { GuestMount } from "../../vm/agent/protocol.js";
import type { VolumeSpec } from "../types.js";
import type { DriveTable } from "./drives.js";
import { byDepth } from "./hostmounts.js";
import { ext4Args, ext4Size, PACK_SQUASHFS_FLAGS, sparseFile, treeUsage } from "./images.js";
import type { RootfsRequest } from "./types.js";

/** Where the guest mounts the drives before binding their entries (removed again before the process runs). */
export const GUEST_HELPER_DIR = "/.kindling";
/** Room to write into rw mounts beyond their current size (sparse: costs nothing unless written). */
const RW_HEADROOM = 1 << 30;

interface Group {
  name: string;
  readOnly: boolean;
  volumes: VolumeSpec[];
}

/** Builds the drives for `volumes`, adds them to `table`, and returns the guest mounts that put them in place. */
export async function attachVolumes(
  req: RootfsRequest,
  table: DriveTable,
  volumes: VolumeSpec[],
): Promise<GuestMount[]> {
  if (volumes.length === 0) return [];
  const groups: Group[] =
    req.packing === "pack"
      ? [
          { name: "ro", readOnly: true, volumes: volumes.filter((v) => v.readOnly) },
          { name: "rw", readOnly: false, volumes: volumes.filter((v) => !v.readOnly) },
        ].filter((g) => g.volumes.length > 0)
      : volumes.map((v, i) => ({ name: `v${i}`, readOnly: v.readOnly, volumes: [v] }));
  table.check(req.vmm, 0, groups.length, req.nics); // before building anything
  // Built one after the other: mksquashfs and mkfs.ext4 each use every core already.
  const helpers: GuestMount[] = [];
  const binds: (GuestMount & { destination: string })[] = [];
  for (const g of groups) {
    const file = req.runDir.file(`${g.name}.${g.readOnly ? "squashfs" : "ext4"}`);
    await buildGroup(req, g, file);
    const device = table.add(`vol_${g.name}`, file, g.readOnly);
    const at = `${GUEST_HELPER_DIR}/${g.name}`;
    helpers.push({
      kind: "block",
      source: device,
      target: at,
      fstype: g.readOnly ? "squashfs" : "ext4",
      readOnly: g.readOnly,
    });
    for (const [i, v] of g.volumes.entries()) {
      binds.push({
        kind: "bind",
        source: `${at}/${i}`,
        target: v.destination,
        destination: v.destination,
        readOnly: v.readOnly,
      });
    }
  }
  const detach = (target: string): GuestMount => ({ kind: "detach", source: "", target });
  return [
    ...helpers,
    ...byDepth(binds).map(({ destination: _, ...m }) => m),
    ...helpers.map((h) => detach(h.target)),
    detach(GUEST_HELPER_DIR),
  ];
}

/**
 * The group's image, built in a private mount namespace: each mount bound at stage/<i>, then mksquashfs
 * or mkfs.ext4 -d of the stage. The binds exist only in that namespace: they vanish with its last process
 * (even if kindling dies), so they need no unmounting and no record. An rw image is held as a sync-back
 * resource before the VM can write to it.
 */
async function buildGroup(req: RootfsRequest, g: Group, file: string): Promise<void> {
  const stage = req.runDir.file(`${g.name}-stage`);
  await mkdir(stage, { recursive: true });
  for (const [i, v] of g.volumes.entries()) {
    const at = path.join(stage, String(i));
    if ((await stat(v.source)).isDirectory()) await mkdir(at, { recursive: true });
    else await writeFile(at, "", { flag: "a" });
  }
  let build: string[];
  if (g.readOnly) {
    build = ["mksquashfs", stage, file, ...PACK_SQUASHFS_FLAGS, "-quiet"];
  } else {
    const size = ext4Size(await treeUsage(g.volumes.map((v) => v.source)), RW_HEADROOM);
    await sparseFile(file, size.bytes);
    build = ["mkfs.ext4", ...ext4Args(size, { fromDir: stage, journal: true }), file];
  }
  const binds = g.volumes.map((v, i) => `mount --bind ${shq(v.source)} ${shq(path.join(stage, String(i)))}`);
  const script = ["set -e", ...binds, `exec ${build.map(shq).join(" ")}`].join("\n");
  await exec("unshare", ["--mount", "--propagation", "private", "sh", "-c", script]);
  if (!g.readOnly) {
    await req.runDir.hold(req.scope, {
      kind: "sync-back",
      image: file,
      mountPoint: req.runDir.file(`${g.name}-sync`),
      targets: g.volumes.map((v, i) => ({ entry: String(i), dest: v.source })),
    });
  }
}

/** A shell word for `s`. */
function shq(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}
