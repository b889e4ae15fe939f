/**
 * The shapes of the service's API, as api/openapi.yaml describes them: generated from that document by
 * openapi-typescript into api-types.ts (`npm run gen:api-types`; test/client-types.test.ts fails when it
 * is stale), so the service's handlers and the client library (src/client) use the same types and
 * cannot drift from the document or from each other. The tests also check real responses against it.
 */
import type { components } from "./api-types.js";

type Schemas = components["schemas"];

export type ApiError = Schemas["Error"];
/** POST /v1/containers: what to run (the `kindling run` flags, as JSON). */
export type ContainerCreateRequest = Schemas["ContainerCreateRequest"];
export type ContainerCreated = Schemas["ContainerCreated"];
export type ContainerStatus = Schemas["ContainerStatus"];
/** One row of GET /v1/containers. */
export type ContainerSummary = Schemas["ContainerSummary"];
/** GET /v1/containers/{id}. */
export type ContainerInspect = Schemas["ContainerInspect"];
export type ContainerExit = Schemas["ContainerExit"];
export type LogLine = Schemas["LogLine"];
export type ServiceEvent = Schemas["Event"];
export type Info = Schemas["Info"];
export type ImageSummary = Schemas["ImageSummary"];
export type ImageInspect = Schemas["ImageInspect"];
/** The exec stream's SPEC frame (frames.ts). */
export type ExecRequest = Schemas["ExecRequest"];
/** The exec stream's EXIT frame. */
export type ExecExit = Schemas["ExecExit"];
/** An attached run's EXIT frame: the process's status, and why kindling stopped it if it did. */
export type AttachExit = Schemas["AttachExit"];
/** A terminal's size in characters (ttySize, the RESIZE frame). */
export type TtySize = Schemas["TtySize"];
