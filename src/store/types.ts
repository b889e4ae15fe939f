/** A content address: "sha256:<64 hex>". */
export type Digest = `sha256:${string}`;

/** One chunk of a block image: bytes [offset, offset+length) have sha256 `digest`. */
export interface ChunkRef {
  offset: number;
  length: number;
  digest: Digest;
}

export const BLOCK_INDEX_MEDIA_TYPE = "application/vnd.kindling.blockindex.v1+json";

/**
 * The index of a converted image: how its block image is cut into chunks. Stored as a blob; the
 * sha256 of its canonical JSON bytes is the image's `digest`.
 */
export interface BlockIndex {
  mediaType: typeof BLOCK_INDEX_MEDIA_TYPE;
  /** "squashfs" today. */
  format: "squashfs";
  /** Bytes of the block image. */
  blockSize: number;
  /** sha256 of the whole block image. */
  blockDigest: Digest;
  chunking: { algorithm: "fixed" | "fastcdc"; avgSize: number; minSize?: number; maxSize?: number };
  /** Ordered, contiguous, covering [0, blockSize). */
  chunks: ChunkRef[];
}

/** Where missing chunks come from: the local store or a registry. Must verify nothing; callers do. */
export interface ChunkSource {
  /** Human-readable, for errors ("registry 127.0.0.1:5000/foo"). */
  readonly description: string;
  fetch(digest: Digest, length: number, signal?: AbortSignal): Promise<Buffer>;
}

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
