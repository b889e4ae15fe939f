/** Host-side rootfs strategies for microVMs and the packing of -v mounts into drives. */
export { DriveTable, guestDiskName } from "./drives.js";
export { parseSize } from "./images.js";
export { prepareRootfs, ROOT_TAG, VOLUMES_TAG } from "./strategies.js";
export { syncBack } from "./syncback.js";
export { MOUNT_PACKINGS, type MountPacking, type RootfsPlan, type RootfsRequest } from "./types.js";
export { attachVolumes, GUEST_HELPER_DIR } from "./volumes.js";
