export {
  AgentClient,
  GuestProcess,
  type ProcessExit,
  type ProcessIo,
  type ReadyInfo,
  StartFailedError,
} from "./client.js";
export * from "./protocol.js";
