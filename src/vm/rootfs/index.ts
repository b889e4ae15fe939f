/** Host-side rootfs strategies for microVMs and the packing of -v mounts into drives. */
export { DriveTable, guestDiskName, QEMU_MAX_VIRTIO_DEVICES } from "./drives.js";
export { parseSize } from "./images.js";
export { prepareRootfs, ROOT_TAG, VOLUMES_TAG } from "./strategies.js";
export { syncBack } from "./syncback.js";
export { MOUNT_PACKINGS, type MountPacking, type RootfsPlan, type RootfsRequest, type Vmm } from "./types.js";
export { attachVolumes, GUEST_HELPER_DIR } from "./volumes.js";
