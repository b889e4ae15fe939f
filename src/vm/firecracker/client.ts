/** A small HTTP client for Firecracker's API on its Unix socket (node:http with socketPath). */
import http from "node:http";
import { KindlingError } from "../../util/errors.js";
import type { FirecrackerCall } from "./render.js";

export interface ApiResponse {
  status: number;
  body: unknown;
}

export interface ApiClientOptions {
  timeoutMs?: number;
}

export class FirecrackerApi {
  /** Every request sent, in order (what a test or a debug dump wants to see). */
  readonly sent: FirecrackerCall[] = [];

  constructor(
    readonly socketPath: string,
    private readonly opts: ApiClientOptions = {},
  ) {}

  /** Sends one request; resolves with any status (callers decide what is an error). */
  request(method: FirecrackerCall["method"], urlPath: string, body?: unknown): Promise<ApiResponse> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    this.sent.push({ method, path: urlPath, body });
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          socketPath: this.socketPath,
          method,
          path: urlPath,
          // A fresh connection per request: nothing stays open when the VM goes away.
          agent: false,
          headers: {
            Accept: "application/json",
            ...(payload ? { "Content-Type": "application/json", "Content-Length": payload.length } : {}),
          },
          timeout: this.opts.timeoutMs ?? 10_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("error", reject);
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString();
            let parsed: unknown = text;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              // not JSON: keep the text
            }
            resolve({ status: res.statusCode ?? 0, body: parsed });
          });
        },
      );
      req.on("timeout", () => req.destroy(new Error(`no answer within ${this.opts.timeoutMs ?? 10_000} ms`)));
      req.on("error", (err) =>
        reject(
          new KindlingError(
            `Firecracker API ${method} ${urlPath} on ${this.socketPath} failed: ${(err as Error).message}`,
          ),
        ),
      );
      req.end(payload);
    });
  }

  /** Sends a request that must succeed (2xx); a fault names the call and Firecracker's fault_message. */
  async call(method: FirecrackerCall["method"], urlPath: string, body?: unknown): Promise<unknown> {
    const res = await this.request(method, urlPath, body);
    if (res.status < 200 || res.status >= 300) {
      const fault =
        (res.body as { fault_message?: string } | undefined)?.fault_message ?? JSON.stringify(res.body);
      throw new KindlingError(`Firecracker refused ${method} ${urlPath} (HTTP ${res.status}): ${fault}`);
    }
    return res.body;
  }

  put(urlPath: string, body: unknown): Promise<unknown> {
    return this.call("PUT", urlPath, body);
  }

  get(urlPath: string): Promise<unknown> {
    return this.call("GET", urlPath);
  }
}
