/** The VMM backends by name: the only place that knows which class implements which VMM. */
import type { KindlingHome } from "../util/home.js";
import { type FirecrackerBootOptions, FirecrackerVmm } from "./firecracker/backend.js";
import { type QemuBootOptions, QemuVmm } from "./qemu.js";
import type { Vmm, VmmName } from "./vmm.js";

export interface VmmOptions {
  /** The home whose kernel cache holds QEMU's KVM probe result. */
  home?: KindlingHome;
  qemu?: QemuBootOptions;
  firecracker?: FirecrackerBootOptions;
}

export function createVmm(name: VmmName, opts: VmmOptions = {}): Vmm {
  switch (name) {
    case "qemu":
      return new QemuVmm({ home: opts.home, ...opts.qemu });
    case "firecracker":
      return new FirecrackerVmm(opts.firecracker);
  }
}
