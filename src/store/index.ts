/** The local directory store: the API other components use. */
export { blobSize, hasBlob, putBlob, readBlob } from "./blobs.js";
export { decodeBlockIndex, encodeBlockIndex, readBlockIndex, writeBlockIndex } from "./blockindex.js";
export { deleteImageRecord, findImage, listImages, loadImage, saveImage } from "./catalog.js";
export { chunkFile, DEFAULT_CHUNKING, sha256 } from "./chunker.js";
export { collectGarbage } from "./gc.js";
export { LocalChunkSource, localBytes } from "./local.js";
export { withStoreLock } from "./lock.js";
export * from "./types.js";
