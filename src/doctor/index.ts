/** `kindling doctor` and the automatic VMM choice for `kindling run`. */

export { type KvmFacts, kvmFacts } from "../host/kvm.js";
export type { Check } from "./checks.js";
export {
  type DoctorReport,
  type DoctorRuntime,
  formatReport,
  pickDefaultVmm,
  type RuntimeStatus,
  runDoctor,
} from "./report.js";
