export { AgentClient, GuestProcess, type ProcessExit, type ProcessIo, type ReadyInfo } from "./client.js";
export * from "./protocol.js";
