import type { Digest } from "../store/types.js";

/** The parts of an OCI image config that `run` uses. */
export interface RunConfig {
  entrypoint: string[];
  cmd: string[];
  env: string[];
  workingDir: string;
  user: string;
}

/** Where an image's chunks live when they are not in the local store. */
export type ImageOrigin =
  | { kind: "local" }
  | { kind: "registry"; registry: string; repository: string; reference: string; insecure: boolean };

/** One entry of the image catalog ($KINDLING_HOME/images/<name>.json). */
export interface ImageRecord {
  name: string;
  /** sha256 of the block index blob: the content address of the converted image. */
  digest: Digest;
  /** Bytes of the block image. */
  blockSize: number;
  config: RunConfig;
  origin: ImageOrigin;
  /** ISO time the record was written. */
  created: string;
}
