/**
 * Firecracker's hybrid vsock, host side. The guest's vsock device is backed by Unix sockets:
 * - host -> guest: connect to uds_path, write "CONNECT <port>\n", read "OK <hostport>\n"; after that the
 *   socket is a byte stream to the guest's listener on <port>. Firecracker closes the socket instead of
 *   answering when nothing in the guest listens on that port (yet), so callers retry until a deadline.
 * - guest -> host: Firecracker connects to "<uds_path>_<port>", where the host must be listening.
 */

import { rm } from "node:fs/promises";
import net from "node:net";
import { KindlingError } from "../../util/errors.js";

/** The longest handshake reply we accept; anything longer is not Firecracker. */
const MAX_REPLY = 64;

/** One attempt: connect, CONNECT <port>, expect OK. Rejects on refusal, close, or a bad reply. */
export function vsockConnectOnce(udsPath: string, port: number, timeoutMs = 5000): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(udsPath);
    let buf = Buffer.alloc(0);
    let settled = false;
    const fail = (why: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      reject(new KindlingError(`vsock CONNECT ${port} via ${udsPath}: ${why}`));
    };
    const timer = setTimeout(() => fail(`no reply within ${timeoutMs} ms`), timeoutMs);
    // Read the reply with 'readable' + read(): once that listener is removed the socket is back in its
    // initial mode, so a consumer's on("data") or pipe() starts the flow and nothing is lost.
    const onReadable = () => {
      for (let chunk = sock.read() as Buffer | null; chunk; chunk = sock.read() as Buffer | null) {
        buf = Buffer.concat([buf, chunk]);
        const nl = buf.indexOf(0x0a);
        if (nl < 0) {
          if (buf.length > MAX_REPLY) return fail(`unexpected reply ${JSON.stringify(buf.toString())}`);
          continue;
        }
        const line = buf.subarray(0, nl).toString();
        if (!/^OK \d+$/.test(line)) return fail(`unexpected reply ${JSON.stringify(line)}`);
        settled = true;
        clearTimeout(timer);
        sock.off("readable", onReadable);
        sock.off("error", onError);
        sock.off("close", onClose);
        // Bytes the guest sent right after the handshake belong to the stream.
        const rest = buf.subarray(nl + 1);
        if (rest.length > 0) sock.unshift(rest);
        return resolve(sock);
      }
    };
    const onError = (err: Error) => fail(err.message);
    const onClose = () => fail("closed without a reply (is anything listening on that port in the guest?)");
    sock.on("readable", onReadable);
    sock.on("error", onError);
    sock.on("close", onClose);
    sock.on("connect", () => sock.write(`CONNECT ${port}\n`));
  });
}

/** Retries vsockConnectOnce until the guest listens or the deadline passes (the guest is still booting). */
export async function vsockConnect(
  udsPath: string,
  port: number,
  opts: { timeoutMs?: number; intervalMs?: number; signal?: AbortSignal } = {},
): Promise<net.Socket> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  let last: unknown;
  for (;;) {
    opts.signal?.throwIfAborted();
    try {
      return await vsockConnectOnce(udsPath, port, Math.max(100, Math.min(5000, deadline - Date.now())));
    } catch (err) {
      last = err;
    }
    if (Date.now() >= deadline) break;
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
  }
  throw new KindlingError(
    `the guest did not accept a vsock connection on port ${port} within ${opts.timeoutMs ?? 30_000} ms: ${(last as Error).message}`,
  );
}

/** The path where Firecracker delivers guest-initiated connections to <port>. */
export function guestListenerPath(udsPath: string, port: number): string {
  return `${udsPath}_${port}`;
}

/** Listens at <uds_path>_<port> for connections the guest opens; close() removes the socket file. */
export class VsockListener {
  private readonly waiting: ((s: net.Socket) => void)[] = [];
  private readonly queued: net.Socket[] = [];
  private constructor(
    readonly path: string,
    private readonly server: net.Server,
  ) {
    server.on("connection", (s) => {
      const w = this.waiting.shift();
      if (w) w(s);
      else this.queued.push(s);
    });
  }

  static async listen(udsPath: string, port: number): Promise<VsockListener> {
    const p = guestListenerPath(udsPath, port);
    await rm(p, { force: true });
    // Not pauseOnConnect: a new socket buffers what arrives until its consumer reads, and a consumer's
    // on("data") starts the flow (an explicitly paused socket would need resume()).
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(p, () => {
        server.off("error", reject);
        resolve();
      });
    });
    return new VsockListener(p, server);
  }

  /** The next connection the guest opens. */
  accept(signal?: AbortSignal): Promise<net.Socket> {
    const s = this.queued.shift();
    if (s) return Promise.resolve(s);
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiting.indexOf(done);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal?.reason ?? new Error("aborted"));
      };
      const done = (sock: net.Socket) => {
        signal?.removeEventListener("abort", onAbort);
        resolve(sock);
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(done);
    });
  }

  async close(): Promise<void> {
    for (const s of this.queued.splice(0)) s.destroy();
    // Stop listening now; connections already handed out belong to their callers.
    this.server.close();
    await rm(this.path, { force: true });
  }
}
