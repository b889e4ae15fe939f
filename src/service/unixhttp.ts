/** HTTP/1.1 over a Unix socket: small JSON requests, streams, and upgrades (service <-> shim, client <-> service). */
import { type IncomingMessage, request } from "node:http";
import type { Socket } from "node:net";

export interface JsonResponse<T = unknown> {
  status: number;
  body: T;
}

export interface RequestOptions {
  body?: unknown;
  /** Abort after this long (ms); default none (wait, stop, and follow may take as long as they take). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Sends a request; resolves with the raw response (a stream) once its headers are in. */
export function rawRequest(
  socketPath: string,
  method: string,
  path: string,
  opts: RequestOptions = {},
): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const payload = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: payload ? { "content-type": "application/json", "content-length": payload.length } : {},
        signal: opts.signal,
        agent: false,
      },
      resolve,
    );
    req.on("error", reject);
    if (opts.timeoutMs !== undefined) {
      req.setTimeout(opts.timeoutMs, () => req.destroy(new Error(`no answer within ${opts.timeoutMs} ms`)));
    }
    req.end(payload);
  });
}

export async function readBody(res: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of res) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** A request whose answer is JSON (or empty). */
export async function jsonRequest<T = unknown>(
  socketPath: string,
  method: string,
  path: string,
  opts: RequestOptions = {},
): Promise<JsonResponse<T>> {
  const res = await rawRequest(socketPath, method, path, opts);
  const text = (await readBody(res)).toString();
  let body: unknown = text;
  if ((res.headers["content-type"] ?? "").includes("json") && text.length > 0) body = JSON.parse(text);
  return { status: res.statusCode ?? 0, body: body as T };
}

/**
 * Opens an upgraded connection (`Upgrade: protocol`); resolves with the socket and any bytes that
 * came with the 101, or rejects with the JSON error the server answered instead.
 */
export function upgradeRequest(
  socketPath: string,
  path: string,
  protocol: string,
): Promise<{ socket: Socket; head: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request({
      socketPath,
      method: "POST",
      path,
      headers: { connection: "Upgrade", upgrade: protocol },
      agent: false,
    });
    req.on("upgrade", (_res, socket, head) => resolve({ socket, head }));
    req.on("response", (res) => {
      void readBody(res).then((b) => {
        let message = `HTTP ${res.statusCode}`;
        let code = "EHTTP";
        try {
          const e = JSON.parse(b.toString()) as { code: string; message: string };
          message = e.message;
          code = e.code;
        } catch {
          // not JSON
        }
        reject(Object.assign(new Error(message), { code, status: res.statusCode }));
      }, reject);
    });
    req.on("error", reject);
    req.end();
  });
}
