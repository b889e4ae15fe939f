import type { ChunkRef } from "./types.js";

/** sha256 off the event loop (WebCrypto hashes on the thread pool). */
export async function sha256Hex(data: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest(
    "SHA-256",
    new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength),
  );
  return Buffer.from(d).toString("hex");
}

/** Whether `data` is the chunk `ref` names: its length and its sha256. */
export async function isChunk(ref: Pick<ChunkRef, "digest" | "length">, data: Uint8Array): Promise<boolean> {
  return data.length === ref.length && `sha256:${await sha256Hex(data)}` === ref.digest;
}
