import { createHash, type Hash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { rename, rm, stat } from "node:fs/promises";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import type { Digest } from "../store/types.js";
import { tempPathFor } from "../util/atomic.js";
import { KindlingError } from "../util/errors.js";
import type { RegistryClient, Reply } from "./client.js";

/** Thrown when the bytes do not hash to the digest asked for. */
export class DigestMismatchError extends KindlingError {
  constructor(message: string) {
    super(message, "EDIGEST");
  }
}

export interface DownloadOptions {
  signal?: AbortSignal;
  /** Called with the bytes of this blob on disk so far. */
  onBytes?: (received: number) => void;
  /** Attempts when the body stalls or breaks mid-way; default 4. */
  attempts?: number;
}

/**
 * Streams blob `digest` of `size` bytes to `dest`, hashing as it goes. A body that breaks or stalls
 * resumes where it stopped (HTTP Range) when the registry allows it. The file appears only when
 * complete and verified; on any failure nothing is left behind.
 */
export async function downloadBlob(
  client: RegistryClient,
  digest: Digest,
  size: number,
  dest: string,
  opts: DownloadOptions = {},
): Promise<void> {
  const attempts = opts.attempts ?? 4;
  const tmp = tempPathFor(dest);
  let resumedOnce = false;
  try {
    for (let attempt = 1; ; attempt++) {
      // Re-hash what is already on disk rather than trust a hash that may be ahead of the file.
      const have = await fileSize(tmp);
      const hash = createHash("sha256");
      if (have > 0) for await (const part of createReadStream(tmp)) hash.update(part as Buffer);
      if (have > 0 && have >= size) {
        // Every byte arrived before the failure: done if they verify, else start over.
        if (have === size && `sha256:${hash.copy().digest("hex")}` === digest) {
          await rename(tmp, dest);
          return;
        }
        await rm(tmp, { force: true });
        continue;
      }
      const headers: Record<string, string> = have > 0 ? { range: `bytes=${have}-` } : {};
      try {
        const reply = await client.request(`blobs/${digest}`, { signal: opts.signal, headers });
        const resumed = have > 0 && reply.res.status === 206 && rangeStart(reply) === have;
        resumedOnce ||= resumed;
        await pipeline(
          bodyStream(reply),
          verifier(
            client,
            digest,
            size,
            reply,
            resumed ? have : 0,
            resumed ? hash : createHash("sha256"),
            opts.onBytes,
          ),
          createWriteStream(tmp, { flags: resumed ? "a" : "w" }),
        );
        await rename(tmp, dest);
        return;
      } catch (err) {
        if (opts.signal?.aborted || attempt >= attempts) throw wrap(err, client, digest);
        if (err instanceof DigestMismatchError && resumedOnce) {
          // A resumed download that does not verify gets one clean retry from byte 0.
          await rm(tmp, { force: true });
          resumedOnce = false;
          continue;
        }
        if (err instanceof KindlingError) throw err;
      }
    }
  } finally {
    await rm(tmp, { force: true });
  }
}

async function fileSize(file: string): Promise<number> {
  try {
    return (await stat(file)).size;
  } catch {
    return 0;
  }
}

/** The first byte of a 206 answer ("Content-Range: bytes 100-199/200"). */
function rangeStart(reply: Reply): number | undefined {
  const m = /^bytes (\d+)-/.exec(reply.res.headers.get("content-range") ?? "");
  return m ? Number(m[1]) : undefined;
}

const MAX_SMALL_BLOB = 64 << 20;

/** Fetches a small blob (config, index) into memory and verifies it. */
export async function fetchBlobVerified(
  client: RegistryClient,
  digest: Digest,
  size: number,
  signal?: AbortSignal,
): Promise<Buffer> {
  // Configs and block indexes are small; a manifest claiming more is not to be buffered.
  if (size > MAX_SMALL_BLOB) {
    throw new KindlingError(
      `${client.where}/${client.repository}: blob ${digest} is declared as ${size} bytes, more than the ${MAX_SMALL_BLOB} allowed for a config or index`,
    );
  }
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
 * `maxBytes` fails, so a broken registry cannot exhaust memory. A body that breaks or stalls is
 * fetched again, up to the client's attempts.
 */
export async function fetchBlob(
  client: RegistryClient,
  digest: Digest,
  maxBytes: number,
  signal?: AbortSignal,
): Promise<Buffer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fetchBlobOnce(client, digest, maxBytes, signal);
    } catch (err) {
      if (err instanceof KindlingError || signal?.aborted || attempt >= client.attempts) {
        throw wrap(err, client, digest);
      }
    }
  }
}

async function fetchBlobOnce(
  client: RegistryClient,
  digest: Digest,
  maxBytes: number,
  signal?: AbortSignal,
): Promise<Buffer> {
  const reply = await client.request(`blobs/${digest}`, { signal });
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
  } finally {
    reply.done();
  }
  return Buffer.concat(parts, received);
}

/**
 * Bytes [start, end) of a blob, streamed (HTTP Range; one attempt: the caller falls back). Fails
 * unless the registry answers 206 with exactly that range. Verifying is the caller's job.
 */
export async function openBlobRange(
  client: RegistryClient,
  digest: Digest,
  start: number,
  end: number,
  signal: AbortSignal,
): Promise<AsyncIterable<Uint8Array>> {
  const reply = await client.request(`blobs/${digest}`, {
    signal,
    headers: { range: `bytes=${start}-${end - 1}` },
    attempts: 1,
  });
  if (reply.res.status !== 206 || rangeStart(reply) !== start) {
    await reply.res.body?.cancel().catch(() => {});
    reply.done();
    throw new KindlingError(
      `${client.where}/${client.repository}: blob ${digest} answered ${reply.res.status} to a range request`,
    );
  }
  return bodyStream(reply);
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
  start: number,
  hash: Hash,
  onBytes?: (n: number) => void,
): Transform {
  let received = start;
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
