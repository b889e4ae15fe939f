import type { Readable } from "node:stream";

/** Reads a stream to its end as text (an absent stream is empty). */
export async function readAll(stream: Readable | null): Promise<string> {
  if (!stream) return "";
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts).toString();
}
