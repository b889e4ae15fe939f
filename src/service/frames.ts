/**
 * The byte stream of an exec or an attach after the HTTP upgrade (`Upgrade: kindling-exec`), both
 * ways between client, service and supervisor: frames of [type: u8][length: u32 big-endian][payload].
 * Exec:   client -> server: SPEC (first, JSON ExecRequest), STDIN, STDIN_EOF, SIGNAL (a signal name),
 *         RESIZE (with tty: JSON { rows, cols }, the terminal's new size).
 *         server -> client: STDOUT, STDERR, then EXIT (JSON ExecExit) or ERROR (JSON { code, message }).
 * Attach: (an attached run) no SPEC: the container starts when the client attaches. Client -> server:
 *         STDIN, STDIN_EOF, SIGNAL (SIGINT/SIGTERM/SIGHUP: stop it as Ctrl-C does; again: KILL), RESIZE.
 *         server -> client: STDOUT, STDERR, NOTICE (kindling's own one-line notices), then EXIT
 *         (JSON AttachExit, once everything the container held is released) or ERROR.
 */
import type { Duplex } from "node:stream";

export const EXEC_PROTOCOL = "kindling-exec";

export const Frame = {
  SPEC: 0,
  STDIN: 1,
  STDIN_EOF: 2,
  SIGNAL: 3,
  STDOUT: 4,
  STDERR: 5,
  EXIT: 6,
  ERROR: 7,
  NOTICE: 8,
  RESIZE: 9,
} as const;

/** A RESIZE frame's payload read back; undefined if it is not a size. */
export function decodeResize(payload: Buffer): { rows: number; cols: number } | undefined {
  try {
    const v = JSON.parse(payload.toString()) as { rows?: unknown; cols?: unknown };
    const ok = (n: unknown): n is number =>
      typeof n === "number" && Number.isInteger(n) && n > 0 && n <= 0xffff;
    return ok(v.rows) && ok(v.cols) ? { rows: v.rows, cols: v.cols } : undefined;
  } catch {
    return undefined;
  }
}

// The SPEC and EXIT frames' JSON: the API's types (api.ts, generated from api/openapi.yaml).
export type { AttachExit, ExecExit, ExecRequest } from "./api.js";

const HEADER = 5;
/** The largest payload a peer may send (larger output is cut into several frames). */
export const MAX_FRAME = 1 << 20;

export function encodeFrame(type: number, payload: Buffer | string = Buffer.alloc(0)): Buffer {
  const body = typeof payload === "string" ? Buffer.from(payload) : payload;
  const header = Buffer.alloc(HEADER);
  header.writeUInt8(type, 0);
  header.writeUInt32BE(body.length, 1);
  return Buffer.concat([header, body]);
}

/** Calls onFrame for each complete frame read from `stream`; a frame too large ends it with an error. */
export function readFrames(
  stream: Duplex,
  onFrame: (type: number, payload: Buffer) => void,
  initial?: Buffer,
): void {
  let buf: Buffer = initial && initial.length > 0 ? Buffer.from(initial) : Buffer.alloc(0);
  const drain = () => {
    while (buf.length >= HEADER) {
      const len = buf.readUInt32BE(1);
      if (len > MAX_FRAME) {
        stream.destroy(new Error(`exec frame of ${len} bytes is too large`));
        return;
      }
      if (buf.length < HEADER + len) return;
      const type = buf.readUInt8(0);
      const payload = buf.subarray(HEADER, HEADER + len);
      buf = buf.subarray(HEADER + len);
      onFrame(type, payload);
    }
  };
  stream.on("data", (chunk: Buffer) => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    drain();
  });
  if (buf.length > 0) queueMicrotask(drain);
}

/** Writes data as STDOUT/STDERR frames of at most MAX_FRAME bytes. */
export function writeOutput(stream: Duplex, type: number, data: Buffer): boolean {
  let ok = true;
  for (let off = 0; off < data.length; off += MAX_FRAME) {
    ok = stream.write(encodeFrame(type, data.subarray(off, off + MAX_FRAME))) && ok;
  }
  return ok;
}
