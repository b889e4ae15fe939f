/**
 * Running containers: `kindling run` for every runtime: runc and runsc (oci-runtime.ts), QEMU and
 * Firecracker (vm-runtime.ts, through src/vm's Vmm interface); runtimes.ts is the table of them.
 */
export { isPathRef, LazyBlockImage, resolveImage } from "./image.js";
export {
  type RunHandle,
  type RunRequest,
  type RunResult,
  runContainer,
  type StartedRun,
  type StopReason,
} from "./lifecycle.js";
export { DEFAULT_STOP_GRACE_SECONDS, parseRunOptions, type RawRunFlags } from "./options.js";
export { buildProcessSpec, mergeEnv, resolveArgs } from "./process.js";
export { describeResource, type Resource, releaseResource } from "./resources.js";
export { FileBlockImage, mountOverlayRootfs } from "./rootfs.js";
export { type CleanupReport, cleanupStaleRuns, type OwnerRecord, RunDir } from "./rundir.js";
export { getRuntime } from "./runtimes.js";
export { exitStatusOf } from "./status.js";
export type * from "./types.js";
