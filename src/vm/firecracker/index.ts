/** The Firecracker backend's public surface. */
export {
  bootFirecrackerVm,
  FIRECRACKER_TRAITS,
  FirecrackerBootedVm,
  type FirecrackerBootOptions,
  FirecrackerVmm,
} from "./backend.js";
export { FirecrackerApi } from "./client.js";
export { type JailerOptions, planJail, prepareJail, renderJailerArgs } from "./jailer.js";
export { FIRECRACKER_MISSING, firecrackerVersion, resolveFirecracker } from "./process.js";
export { renderApiCalls, renderConfigFile } from "./render.js";
export {
  createFirecrackerSnapshot,
  type FirecrackerSnapshotFiles,
  renderSnapshotCreate,
  renderSnapshotLoad,
  withSnapshotLoad,
} from "./snapshot.js";
export {
  AGENT_VSOCK_PORT,
  type FirecrackerExit,
  type FirecrackerVm,
  type FirecrackerVmOptions,
  firecrackerBootSteps,
  startFirecrackerVm,
  withConfigFile,
  withJailer,
} from "./vm.js";
export { VsockListener, vsockConnect } from "./vsock.js";
