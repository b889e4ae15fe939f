import { KindlingError } from "../../util/errors.js";
import type { DriveSpec } from "../../vm/spec.js";
import type { Vmm } from "../../vm/vmm.js";

/** Linux's virtio-blk names: vda..vdz, vdaa..vdaz, ... (sd_format_disk_name). */
export function guestDiskName(index: number): string {
  let name = "";
  for (let i = index; i >= 0; i = Math.floor(i / 26) - 1) name = String.fromCharCode(97 + (i % 26)) + name;
  return `/dev/vd${name}`;
}

/**
 * The drives of a VM in the order the guest names them. Both backends attach drives in list order with
 * the root first (QEMU: one virtio-blk-device per -drive, in order; Firecracker: the root device first,
 * then in PUT order), and the guest probes virtio-mmio devices in that order: drive i is vd<i>.
 * test/rootfs-drives.test.ts checks this in a real QEMU guest.
 */
export class DriveTable {
  readonly drives: DriveSpec[] = [];

  /** Adds a drive and returns the device name the guest will give it. The root must come first. */
  add(id: string, path: string, readOnly: boolean, isRoot = false): string {
    if (isRoot && this.drives.length > 0) throw new Error("the root drive must be added first");
    this.drives.push({ id, path, readOnly, isRoot });
    return guestDiskName(this.drives.length - 1);
  }

  /**
   * Fails with the limit and a way out when the VMM cannot attach this many devices (+ moreDrives to
   * come). `nics`: network cards, which take a virtio-mmio slot each too.
   */
  check(vmm: Pick<Vmm, "traits">, shares: number, moreDrives = 0, nics = 0): void {
    const max = vmm.traits.maxDevices;
    if (max === undefined) return;
    const drives = this.drives.length + moreDrives;
    const devices = drives + shares + nics + 1; // + the agent's device
    if (devices > max) {
      const nic = nics > 0 ? `, ${nics} network card${nics > 1 ? "s" : ""}` : "";
      throw new KindlingError(
        `too many devices for QEMU microvm: ${drives} drives, ${shares} shares${nic} and the agent's device ` +
          `need ${devices} virtio-mmio slots, the guest sees at most ${max}; ` +
          "use --mount-packing pack (all -v mounts in two drives)",
      );
    }
  }
}
