/**
 * The Kindling service: HTTP/1.1 + JSON on a Unix socket (api/openapi.yaml). It owns no container
 * in memory: supervisors own them (shim.ts) and records on disk describe them (records.ts), so a
 * new service adopts what an earlier one left running.
 */

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { chmod, mkdir, stat, unlink, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createNetServer, type Server as NetServer, type Socket } from "node:net";
import path from "node:path";
import { runDoctor } from "../doctor/report.js";
import { describeImage } from "../image/describe.js";
import { importImage } from "../image/import.js";
import { removeImage } from "../image/remove.js";
import { type NetworkPool, startNetworkPool } from "../network/pool.js";
import { listImages } from "../store/catalog.js";
import { errorMessage, KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import type {
  ContainerCreated,
  ContainerCreateRequest,
  ContainerExit,
  ContainerInspect,
  ContainerSummary,
  ImageInspect,
  ImageSummary,
  Info,
  LogLine,
} from "./api.js";
import { ApiFailure, Containers, exitOf, inspect, summary } from "./containers.js";
import { EventBus, type LogFn } from "./events.js";
import { EXEC_PROTOCOL } from "./frames.js";
import { readLog } from "./logfile.js";
import { Metrics } from "./metrics.js";
import { logFile, readContainer, shimSocket } from "./records.js";
import { normalizeSignal } from "./signals.js";
import { upgradeRequest } from "./unixhttp.js";
import { WarmImages } from "./warm.js";

export const VERSION: string = (
  JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string }
).version;

export interface ServiceOptions {
  home: KindlingHome;
  socket: string;
  log: LogFn;
  /** Exit after this long with no container running and no request (an auto-started service). */
  idleExitMs?: number;
  /** How many images' lazy daemons the service keeps running (warm.ts); default 8. */
  warmImages?: number;
  /** Keep a spare supervisor started ahead of the next container (spare.ts); default true. */
  spareSupervisor?: boolean;
}

type Handler = (req: IncomingMessage, res: ServerResponse, params: string[], url: URL) => Promise<void>;

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

/** An image as GET /v1/images/{name} answers it (the API's ImageInspect). */
function imageInspect(d: Awaited<ReturnType<typeof describeImage>>): ImageInspect {
  return { ...d, config: { ...d.config }, origin: { ...d.origin } };
}

async function readJsonBody<T>(req: IncomingMessage): Promise<T> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > 1 << 20) throw new ApiFailure(413, "ETOOLARGE", "request body larger than 1 MiB");
    parts.push(c as Buffer);
  }
  const text = Buffer.concat(parts).toString();
  if (text.length === 0) return {} as T;
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new ApiFailure(400, "EINVAL", "the request body is not JSON");
  }
}

/** A supervisor's socket that is gone or no longer listening. */
const isGoneSocket = (err: unknown) =>
  ["ENOENT", "ECONNREFUSED"].includes((err as NodeJS.ErrnoException).code ?? "");

const bool = (v: string | null) => v === "1" || v === "true";

/** The abstract socket that makes one service per home: the kernel releases it when we die. */
function lockName(home: KindlingHome): string {
  return `\0kindling-service-${createHash("sha256").update(home.root).digest("hex").slice(0, 24)}`;
}

/** $KINDLING_HOME/kindling.pid: the running service's pid (informational). */
export const pidFile = (home: KindlingHome) => path.join(home.root, "kindling.pid");

export class AlreadyRunning extends KindlingError {}

export class KindlingService {
  readonly containers: Containers;
  readonly events: EventBus;
  private readonly metrics = new Metrics();
  private readonly warm: WarmImages;
  private readonly startedAt = new Date();
  private server?: Server;
  private lock?: NetServer;
  private runtimes?: Promise<Info["runtimes"]>;
  private lastActivity = Date.now();
  private active = 0;
  private idleTimer?: NodeJS.Timeout;
  private netPool?: NetworkPool;
  private readonly routes: [string, RegExp, Handler][] = [];
  private readonly closed: Promise<void>;
  private resolveClosed!: () => void;

  constructor(private readonly opts: ServiceOptions) {
    this.events = new EventBus(opts.log);
    this.warm = new WarmImages(opts.home, opts.warmImages ?? 8, opts.log);
    this.containers = new Containers(
      opts.home,
      this.events,
      {
        onStart: (c) => {
          this.metrics.started(c);
          this.warm.touch(c.record.image, c.record.options.runtime);
          this.events.emit({
            type: "container",
            action: "start",
            id: c.record.id,
            name: c.record.name,
            attributes: { runtime: c.record.options.runtime },
          });
        },
        onExit: (c) => {
          this.metrics.exited(c);
          this.events.emit({
            type: "container",
            action: "exit",
            id: c.record.id,
            name: c.record.name,
            attributes: {
              exitCode: c.state.exitCode ?? null,
              ...(c.state.error ? { error: c.state.error } : {}),
            },
          });
        },
      },
      { spareSupervisor: opts.spareSupervisor },
    );
    this.closed = new Promise((r) => {
      this.resolveClosed = r;
    });
    this.defineRoutes();
  }

  /** Takes the home's service lock, listens, and adopts running containers. */
  async start(): Promise<void> {
    const { home, socket, log } = this.opts;
    this.lock = createNetServer();
    await new Promise<void>((resolve, reject) => {
      this.lock!.once("error", (err: NodeJS.ErrnoException) =>
        reject(
          err.code === "EADDRINUSE"
            ? new AlreadyRunning(`a service already runs for ${home.root} (socket ${socket})`)
            : err,
        ),
      );
      this.lock!.listen(lockName(home), () => resolve());
    });
    await mkdir(path.dirname(socket), { recursive: true });
    await mkdir(path.join(home.root, "containers"), { recursive: true });
    await unlink(socket).catch(() => {}); // a socket an earlier service left: we hold the lock
    // Before answering anyone: watch what an earlier service left running.
    const adopted = await this.containers.adopt();
    for (const c of await this.containers.list()) {
      if (adopted.includes(c.record.id)) this.warm.touch(c.record.image, c.record.options.runtime);
    }
    this.server = createServer((req, res) => void this.handle(req, res));
    this.server.on("upgrade", (req, sock: Socket, head: Buffer) => void this.upgrade(req, sock, head));
    const old = process.umask(0o177); // the socket is created 0600: root only
    try {
      await new Promise<void>((resolve, reject) => {
        this.server!.once("error", reject);
        this.server!.listen(socket, () => resolve());
      });
    } finally {
      process.umask(old);
    }
    await chmod(socket, 0o600);
    // For people and test kits (who stops this home's service); the lock is the abstract socket.
    await writeFile(pidFile(home), `${process.pid}\n`);
    void this.info().catch(() => {}); // the host's runtimes (doctor) are probed once, now, not at the first info
    log("info", "service started", { pid: process.pid, socket, home: home.root, version: VERSION, adopted });
    this.containers.spares.schedule(0);
    this.netPool = startNetworkPool(home, { log }); // ready namespaces for bridged runs (src/network/pool.ts)
    if (this.opts.idleExitMs) {
      this.idleTimer = setInterval(() => void this.checkIdle(), Math.min(5000, this.opts.idleExitMs));
      this.idleTimer.unref();
    }
  }

  private async checkIdle(): Promise<void> {
    // Our socket removed (the home deleted, as test homes are): nobody can reach us; leave.
    if (
      !(await stat(this.opts.socket).then(
        () => true,
        () => false,
      ))
    ) {
      this.opts.log("info", "service socket gone: exiting", { socket: this.opts.socket });
      return this.stop();
    }
    if (this.active > 0 || Date.now() - this.lastActivity < this.opts.idleExitMs!) return;
    if ((await this.containers.running()) > 0) return;
    this.opts.log("info", "service idle: exiting", { idleMs: this.opts.idleExitMs });
    await this.stop();
  }

  /** Stops listening; containers keep running under their supervisors. */
  async stop(): Promise<void> {
    clearInterval(this.idleTimer);
    this.containers.spares.stop();
    if (this.server) {
      this.server.close();
      this.server.closeAllConnections();
      await unlink(this.opts.socket).catch(() => {});
    }
    await unlink(pidFile(this.opts.home)).catch(() => {});
    this.lock?.close();
    await this.warm.releaseAll();
    await this.netPool?.stop();
    this.opts.log("info", "service stopped", { pid: process.pid });
    this.resolveClosed();
  }

  whenClosed(): Promise<void> {
    return this.closed;
  }

  private route(method: string, pattern: string, handler: Handler): void {
    const re = new RegExp(`^${pattern.replace(/\{[a-z]+\}/g, "([^/]+)")}$`);
    this.routes.push([method, re, handler]);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.active++;
    this.lastActivity = Date.now();
    res.on("close", () => {
      this.active--;
      this.lastActivity = Date.now();
    });
    try {
      const url = new URL(req.url ?? "/", "http://kindling");
      let pathMatched = false;
      for (const [method, re, handler] of this.routes) {
        const m = re.exec(url.pathname);
        if (!m) continue;
        pathMatched = true;
        if (method !== req.method) continue;
        await handler(req, res, m.slice(1).map(decodeURIComponent), url);
        return;
      }
      if (pathMatched)
        throw new ApiFailure(405, "EMETHOD", `${req.method} is not allowed on ${url.pathname}`);
      throw new ApiFailure(404, "ENOROUTE", `no such endpoint: ${req.method} ${url.pathname}`);
    } catch (err) {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      if (err instanceof ApiFailure)
        return sendJson(res, err.status, { code: err.code, message: err.message });
      const message = errorMessage(err);
      if (err instanceof KindlingError) {
        const notFound = /^no image named|^no such/.test(message);
        return sendJson(res, notFound ? 404 : 400, { code: notFound ? "ENOENT" : err.code, message });
      }
      this.opts.log("error", "request failed", { url: req.url, error: (err as Error)?.stack ?? message });
      sendJson(res, 500, { code: "EINTERNAL", message });
    }
  }

  private defineRoutes(): void {
    const c = this.containers;
    this.route("GET", "/v1/ping", async (_req, res) => sendJson(res, 200, { ok: true, pid: process.pid }));
    this.route("GET", "/v1/info", async (_req, res) =>
      sendJson(res, 200, (await this.info()) satisfies Info),
    );
    this.route("GET", "/metrics", async (_req, res) => {
      const text = await this.metrics.render(
        this.opts.home,
        await c.list(),
        this.warm.size,
        c.spares.stats(),
      );
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
      res.end(text);
    });
    this.route("GET", "/v1/containers", async (_req, res, _p, url) => {
      const all = bool(url.searchParams.get("all"));
      const list = (await c.list()).filter((x) => all || x.state.status !== "exited");
      sendJson(res, 200, list.map(summary) satisfies ContainerSummary[]);
    });
    this.route("POST", "/v1/containers", async (req, res) => {
      const created = await c.create(await readJsonBody<ContainerCreateRequest>(req));
      sendJson(res, 201, { id: created.record.id, name: created.record.name } satisfies ContainerCreated);
    });
    this.route("GET", "/v1/containers/{id}", async (_req, res, [id]) =>
      sendJson(res, 200, inspect(await c.find(id!)) satisfies ContainerInspect),
    );
    this.route("DELETE", "/v1/containers/{id}", async (_req, res, [id], url) => {
      const removed = await c.remove(id!, bool(url.searchParams.get("force")));
      sendJson(res, 200, { id: removed.record.id, name: removed.record.name } satisfies ContainerCreated);
    });
    this.route("POST", "/v1/containers/{id}/kill", async (_req, res, [id], url) => {
      const raw = url.searchParams.get("signal") ?? "KILL";
      const signal = normalizeSignal(raw);
      if (!signal) throw new ApiFailure(400, "EINVAL", `unknown signal ${raw}`);
      sendJson(res, 200, inspect(await c.kill(id!, signal)) satisfies ContainerInspect);
    });
    this.route("POST", "/v1/containers/{id}/stop", async (_req, res, [id], url) => {
      const t = url.searchParams.get("timeout");
      const timeout = t === null ? undefined : Number(t);
      if (timeout !== undefined && !(Number.isFinite(timeout) && timeout >= 0)) {
        throw new ApiFailure(400, "EINVAL", `timeout: ${t} is not a number of seconds >= 0`);
      }
      sendJson(res, 200, inspect(await c.stop(id!, timeout)) satisfies ContainerInspect);
    });
    this.route("POST", "/v1/containers/{id}/wait", async (req, res, [id]) => {
      const abort = new AbortController();
      res.on("close", () => abort.abort());
      sendJson(res, 200, exitOf(await c.wait(id!, abort.signal)) satisfies ContainerExit);
      void req;
    });
    this.route("GET", "/v1/containers/{id}/logs", async (_req, res, [id], url) => {
      const found = await c.find(id!);
      const follow = bool(url.searchParams.get("follow"));
      const tailParam = url.searchParams.get("tail");
      const tail = tailParam === null ? undefined : Number(tailParam);
      if (tail !== undefined && !(Number.isInteger(tail) && tail >= 0)) {
        throw new ApiFailure(400, "EINVAL", `tail: ${tailParam} is not a whole number >= 0`);
      }
      const abort = new AbortController();
      res.on("close", () => abort.abort());
      res.writeHead(200, { "content-type": "application/x-ndjson" });
      const done = async () => {
        const now = await readContainer(found.dir);
        return !now || now.state.status === "exited";
      };
      for await (const e of readLog(logFile(found.dir), { follow, done, signal: abort.signal, tail })) {
        const line: LogLine = {
          time: new Date(e.time).toISOString(),
          stream: e.stream,
          data: e.data.toString("base64"),
        };
        if (!res.write(`${JSON.stringify(line)}\n`)) await new Promise((r) => res.once("drain", r));
        if (abort.signal.aborted) break;
      }
      res.end();
    });
    this.route("GET", "/v1/events", async (_req, res) => {
      res.writeHead(200, { "content-type": "application/x-ndjson" });
      res.flushHeaders();
      const off = this.events.subscribe((e) => res.write(`${JSON.stringify(e)}\n`));
      await new Promise<void>((resolve) => res.on("close", resolve));
      off();
    });
    this.route("GET", "/v1/images", async (_req, res) => {
      const images = await listImages(this.opts.home);
      sendJson(
        res,
        200,
        images.map((i) => ({
          name: i.name,
          digest: i.digest,
          blockSize: i.blockSize,
          origin: i.origin,
          created: i.created,
        })) satisfies ImageSummary[],
      );
    });
    this.route("GET", "/v1/images/{name}", async (_req, res, [name]) => {
      sendJson(res, 200, imageInspect(await describeImage(this.opts.home, name!)));
    });
    this.route("DELETE", "/v1/images/{name}", async (_req, res, [name]) => {
      await this.warm.release(name!); // else removeImage refuses it as in use
      const freed = await removeImage(this.opts.home, name!);
      this.events.emit({ type: "image", action: "remove", id: name!, name });
      sendJson(res, 200, { name, freedBlobs: freed.blobs, freedBytes: freed.bytes });
    });
    this.route("POST", "/v1/images/pull", async (req, res) => {
      const body = await readJsonBody<{ ref?: string; insecure?: boolean }>(req);
      if (typeof body.ref !== "string" || !body.ref)
        throw new ApiFailure(400, "EINVAL", "ref: a registry reference is required");
      const { pullImage } = await import("../image/registry.js");
      const rec = await pullImage(this.opts.home, body.ref, { insecure: body.insecure === true });
      this.events.emit({ type: "image", action: "pull", id: rec.digest, name: rec.name });
      sendJson(res, 200, imageInspect(await describeImage(this.opts.home, rec.name)));
    });
    this.route("POST", "/v1/images/import", async (req, res) => {
      const body = await readJsonBody<{ path?: string; name?: string }>(req);
      if (typeof body.path !== "string" || !body.path)
        throw new ApiFailure(400, "EINVAL", "path: a file or directory path is required");
      if (typeof body.name !== "string" || !body.name)
        throw new ApiFailure(400, "EINVAL", "name: an image name is required");
      const rec = await importImage(this.opts.home, body.path, { name: body.name });
      this.events.emit({ type: "image", action: "import", id: rec.digest, name: rec.name });
      sendJson(res, 200, imageInspect(await describeImage(this.opts.home, rec.name)));
    });
  }

  /**
   * POST /v1/containers/{id}/exec and /attach with `Upgrade: kindling-exec`: proxied to the
   * container's supervisor, which speaks the same frames.
   */
  private async upgrade(req: IncomingMessage, sock: Socket, head: Buffer): Promise<void> {
    this.lastActivity = Date.now();
    const fail = (status: number, code: string, message: string) => {
      const body = JSON.stringify({ code, message });
      sock.end(
        `HTTP/1.1 ${status} Error\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
      );
    };
    sock.on("error", () => {});
    const m = /^\/v1\/containers\/([^/]+)\/(exec|attach)$/.exec(new URL(req.url ?? "/", "http://k").pathname);
    if (!m || req.method !== "POST")
      return fail(404, "ENOROUTE", `no such upgrade endpoint: ${req.method} ${req.url}`);
    if (req.headers.upgrade !== EXEC_PROTOCOL) return fail(400, "EINVAL", `Upgrade must be ${EXEC_PROTOCOL}`);
    try {
      const c = await this.containers.find(decodeURIComponent(m[1]!));
      if (m[2] === "exec" && c.state.status !== "running") {
        return fail(409, "ENOTRUNNING", `container ${c.record.id} is not running (${c.state.status})`);
      }
      if (m[2] === "attach" && c.state.status === "exited") {
        return fail(409, "ENOTRUNNING", `container ${c.record.id} has ended`);
      }
      const shim = await upgradeRequest(shimSocket(c.dir), `/${m[2]}`, EXEC_PROTOCOL).catch(async (err) => {
        // The container may have just ended: its supervisor has let go of the socket
        // before the service learned of the exit. Say so, as if we had known.
        if (!isGoneSocket(err)) throw err;
        const ended = await this.containers
          .wait(c.record.id, AbortSignal.timeout(5_000))
          .catch(() => undefined);
        if (ended?.state.status === "exited") {
          const what = m[2] === "exec" ? "is not running (exited)" : "has ended";
          throw new ApiFailure(409, "ENOTRUNNING", `container ${c.record.id} ${what}`);
        }
        throw err;
      });
      sock.write(
        `HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${EXEC_PROTOCOL}\r\nConnection: Upgrade\r\n\r\n`,
      );
      // From here on the service only relays bytes both ways.
      shim.socket.on("error", () => sock.destroy());
      if (shim.head.length > 0) sock.write(shim.head);
      if (head.length > 0) shim.socket.write(head);
      sock.pipe(shim.socket);
      shim.socket.pipe(sock);
    } catch (err) {
      if (err instanceof ApiFailure) return fail(err.status, err.code, err.message);
      const e = err as Error & { status?: number; code?: string };
      if (typeof e.status === "number") return fail(e.status, e.code ?? "EHTTP", e.message);
      fail(500, "EEXEC", errorMessage(err));
    }
  }

  private async info(): Promise<Info> {
    this.runtimes ??= runDoctor({ home: this.opts.home }).then(
      (r) => r.runtimes.map((x) => ({ name: x.runtime, usable: x.usable, reason: x.reason })),
      () => [],
    );
    const all = await this.containers.list();
    const running = all.filter((x) => x.state.status !== "exited").length;
    return {
      version: VERSION,
      daemon: {
        pid: process.pid,
        socket: this.opts.socket,
        home: this.opts.home.root,
        startedAt: this.startedAt.toISOString(),
        uptimeSeconds: (Date.now() - this.startedAt.getTime()) / 1000,
      },
      containers: { total: all.length, running, exited: all.length - running },
      images: (await listImages(this.opts.home).catch(() => [])).length,
      runtimes: await this.runtimes,
    };
  }
}
