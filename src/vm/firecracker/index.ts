/** The Firecracker backend's public surface. */
export { FirecrackerApi } from "./client.js";
export { type JailerOptions, planJail, prepareJail, renderJailerArgs } from "./jailer.js";
export { FIRECRACKER_MISSING, firecrackerVersion, resolveFirecracker } from "./process.js";
export { renderApiCalls, renderConfigFile } from "./render.js";
export {
  bootFirecrackerVm,
  FirecrackerBootedVm,
  type FirecrackerBootOptions,
  type RunInFirecrackerOptions,
  runInFirecrackerVm,
} from "./run.js";
export {
  AGENT_VSOCK_PORT,
  type FirecrackerExit,
  type FirecrackerVm,
  type FirecrackerVmOptions,
  startFirecrackerVm,
} from "./vm.js";
export { VsockListener, vsockConnect } from "./vsock.js";
