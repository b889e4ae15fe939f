import { pickDefaultVmm } from "../doctor/report.js";
import { KindlingError } from "../util/errors.js";
import { OciRuntime, RUNC, RUNSC } from "./oci-runtime.js";
import type { RootfsStrategy, RunOptions, Runtime, RuntimeName } from "./types.js";
import { VmRuntime } from "./vm-runtime.js";

/** A runtime and the rootfs strategies it supports (the first is its default). */
export interface RuntimeEntry {
  create(): Runtime;
  rootfs: readonly RootfsStrategy[];
}

/**
 * The table of runtimes `kindling run --runtime` dispatches to (not the OCI registry: that is
 * src/registry). To add one: implement Runtime (prepare returns a Container with start/wait/kill/delete;
 * hold every host resource in the RunDir) and put it here.
 */
const RUNTIMES: Record<RuntimeName, RuntimeEntry> = {
  runc: { create: () => new OciRuntime(RUNC), rootfs: ["lazy"] },
  runsc: { create: () => new OciRuntime(RUNSC), rootfs: ["lazy"] },
  qemu: { create: () => new VmRuntime("qemu"), rootfs: ["lazy", "squashfs", "copy", "virtiofs"] },
  // no virtiofs: Firecracker has no virtio-fs device
  firecracker: { create: () => new VmRuntime("firecracker"), rootfs: ["lazy", "squashfs", "copy"] },
};

/** The runtime for `--runtime name --rootfs strategy`, or a KindlingError saying why not. */
export function getRuntime(name: RuntimeName, rootfs: RootfsStrategy): Runtime {
  const entry = RUNTIMES[name];
  if (!entry.rootfs.includes(rootfs)) {
    throw new KindlingError(
      `--rootfs ${rootfs} does not apply to --runtime ${name} (it supports: ${entry.rootfs.join(", ")})`,
    );
  }
  return entry.create();
}

/**
 * The runtime for parsed run options, deciding `auto` now: the VM runtime `kindling doctor` picks
 * (Firecracker where usable, else QEMU). Called when the run starts, since that probes the host.
 */
export async function runtimeFor(options: Pick<RunOptions, "runtime" | "rootfs">): Promise<Runtime> {
  const name = options.runtime === "auto" ? await pickDefaultVmm() : options.runtime;
  return getRuntime(name, options.rootfs);
}
