import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { rename, rm } from "node:fs/promises";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import type { Digest } from "../store/types.js";
import { tempPathFor } from "../util/atomic.js";
import { KindlingError } from "../util/errors.js";
import type { RegistryClient, Reply } from "./client.js";

/** Thrown when the bytes do not hash to the digest asked for: never retried. */
export class DigestMismatchError extends KindlingError {
  constructor(message: string) {
    super(message, "EDIGEST");
  }
}

export interface DownloadOptions {
  signal?: AbortSignal;
  /** Called with the bytes received so far for this blob (restarts from 0 on a retry). */
  onBytes?: (received: number) => void;
  /** Attempts when the body stalls or breaks mid-way; default 3. */
  attempts?: number;
}

/**
 * Streams blob `digest` of `size` bytes to `dest`, hashing as it goes. The file appears only when
 * complete and verified; on any failure nothing is left behind.
 */
export async function downloadBlob(
  client: RegistryClient,
  digest: Digest,
  size: number,
  dest: string,
  opts: DownloadOptions = {},
): Promise<void> {
  const attempts = opts.attempts ?? 3;
  for (let attempt = 1; ; attempt++) {
    const tmp = tempPathFor(dest);
    try {
      const reply = await client.request(`blobs/${digest}`, { signal: opts.signal });
      await pipeline(
        bodyStream(reply),
        verifier(client, digest, size, reply, opts.onBytes),
        createWriteStream(tmp, { flags: "wx" }),
      );
      await rename(tmp, dest);
      return;
    } catch (err) {
      await rm(tmp, { force: true });
      if (err instanceof KindlingError || opts.signal?.aborted || attempt >= attempts)
        throw wrap(err, client, digest);
      opts.onBytes?.(0);
    }
  }
}

/** Fetches a small blob (config, index) into memory and verifies it. */
export async function fetchBlobVerified(
  client: RegistryClient,
  digest: Digest,
  size: number,
  signal?: AbortSignal,
): Promise<Buffer> {
  const buf = await fetchBlob(client, digest, size, signal);
  const actual = `sha256:${createHash("sha256").update(buf).digest("hex")}`;
  if (actual !== digest || buf.length !== size) {
    throw new DigestMismatchError(
      `blob ${digest} from ${client.where}/${client.repository} has digest ${actual} (${buf.length} bytes, expected ${size}): corrupted`,
    );
  }
  return buf;
}

/**
 * Fetches a blob into one Buffer without verifying it (the caller does). Reading more than
 * `maxBytes` fails, so a broken registry cannot exhaust memory.
 */
export async function fetchBlob(
  client: RegistryClient,
  digest: Digest,
  maxBytes: number,
  signal?: AbortSignal,
  timeoutMs?: number,
): Promise<Buffer> {
  const reply = await client.request(`blobs/${digest}`, { signal, timeoutMs });
  const parts: Buffer[] = [];
  let received = 0;
  try {
    for await (const part of bodyStream(reply)) {
      const b = part as Buffer;
      received += b.length;
      if (received > maxBytes) {
        throw new KindlingError(
          `blob ${digest} from ${client.where}/${client.repository} is larger than the expected ${maxBytes} bytes`,
        );
      }
      parts.push(b);
    }
  } catch (err) {
    throw wrap(err, client, digest);
  } finally {
    reply.done();
  }
  return Buffer.concat(parts, received);
}

function bodyStream(reply: Reply): Readable {
  if (!reply.res.body) return Readable.from([]);
  const stream = Readable.fromWeb(reply.res.body as WebReadableStream<Uint8Array>);
  stream.on("data", () => reply.alive());
  stream.on("close", () => reply.done());
  return stream;
}

/** Passes bytes through while hashing and counting them; fails at the end if they are wrong. */
function verifier(
  client: RegistryClient,
  digest: Digest,
  size: number,
  reply: Reply,
  onBytes?: (n: number) => void,
): Transform {
  const hash = createHash("sha256");
  let received = 0;
  const mismatch = (actual: string) =>
    new DigestMismatchError(
      `blob ${digest} from ${client.where}/${client.repository} has digest ${actual} (${received} bytes, expected ${size}): corrupted in the registry or in transit`,
    );
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      received += chunk.length;
      reply.alive();
      if (received > size) return cb(mismatch("unknown (too many bytes)"));
      hash.update(chunk);
      onBytes?.(received);
      cb(null, chunk);
    },
    flush(cb) {
      reply.done();
      const actual = `sha256:${hash.digest("hex")}`;
      cb(actual === digest && received === size ? null : mismatch(actual));
    },
  });
}

function wrap(err: unknown, client: RegistryClient, digest: Digest): unknown {
  if (err instanceof KindlingError) return err;
  if ((err as Error)?.name === "AbortError") return err;
  return new KindlingError(
    `download of blob ${digest} from ${client.where}/${client.repository} failed: ${(err as Error)?.message ?? err}`,
  );
}
