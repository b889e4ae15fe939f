/**
 * The Kindling client library: `import { Kindling } from "kindling"`. Everything the CLI does with
 * containers, a program can do: it speaks the service's API (api/openapi.yaml) on its Unix socket.
 *
 *   const k = new Kindling({ autoStart: true });
 *   const { id } = await k.createContainer({ image: "busybox", command: ["echo", "hi"], runtime: "runc" });
 *   const exit = await k.wait(id);
 */
import { spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync } from "node:fs";
import path from "node:path";
import type { Readable, Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { config, hostEnv } from "../config/index.js";
// The API's shapes, generated from api/openapi.yaml (src/service/api.ts: the service's handlers use the
// same types; `npm run gen:api-types`; test/client-types.test.ts fails when they are stale against it).
import type {
  AttachExit,
  ContainerCreated,
  ContainerCreateRequest,
  ContainerExit,
  ContainerInspect,
  ContainerSummary,
  ExecExit,
  ExecRequest,
  ImageInspect,
  ImageSummary,
  Info,
  LogLine,
  ServiceEvent,
  TtySize,
} from "../service/api.js";
import { EXEC_PROTOCOL, encodeFrame, Frame, readFrames } from "../service/frames.js";
import { jsonRequest, rawRequest, upgradeRequest } from "../service/unixhttp.js";
import { trace } from "../util/trace.js";

export type {
  AttachExit,
  ContainerCreated,
  ContainerCreateRequest,
  ContainerExit,
  ContainerInspect,
  ContainerSummary,
  ExecExit,
  ExecRequest,
  ImageInspect,
  ImageSummary,
  Info,
  LogLine,
  ServiceEvent,
  TtySize,
};

/** An error the service answered (status and code from the API), or "no service" (status 0). */
export class KindlingApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "KindlingApiError";
  }
}

export interface KindlingOptions {
  /** The state directory (default: the configured home, $KINDLING_HOME, else /var/lib/kindling). */
  home?: string;
  /** The service's socket (default: <home>/kindling.sock when `home` is given, else $KINDLING_SOCKET or that). */
  socket?: string;
  /** Start a service (`kindling daemon --exit-idle`) when none answers. Default false. */
  autoStart?: boolean;
  /** How long an auto-started service stays with nothing to do (seconds; default 300). */
  idleExitSeconds?: number;
}

export interface LogEntry {
  time: Date;
  stream: "stdout" | "stderr";
  data: Buffer;
}

export interface ExecIo {
  stdin?: Readable;
  stdout?: Writable;
  stderr?: Writable;
}

export interface AttachIo extends ExecIo {
  /** Kindling's own notices about the run (stopping, timeout, cleanup problems), one line each. */
  onNotice?: (text: string) => void;
}

/** An attached run in progress. */
export interface AttachSession {
  /** The run's end, once everything it held is released; rejects with a KindlingApiError. */
  exit: Promise<AttachExit>;
  /** Stops it as Ctrl-C does: SIGINT, SIGTERM or SIGHUP (TERM, grace, KILL); a second one kills. */
  signal(name: "SIGINT" | "SIGTERM" | "SIGHUP"): void;
  /** With `tty`: the terminal's new size (the process gets SIGWINCH). */
  resize(size: TtySize): void;
}

/** An exec in progress. */
export interface ExecSession {
  /** The process's end; rejects with a KindlingApiError. */
  exit: Promise<ExecExit>;
  /** Sends a signal (a name: TERM, SIGINT...) to the process. */
  signal(name: string): void;
  /** With `tty`: the terminal's new size. */
  resize(size: TtySize): void;
}

const MAIN = fileURLToPath(new URL("../cli/main.js", import.meta.url));

export class Kindling {
  readonly home: string;
  readonly socket: string;
  private readonly autoStart: boolean;
  private readonly idleExitSeconds: number;
  private started?: Promise<void>;

  constructor(opts: KindlingOptions = {}) {
    const cfg = config();
    this.home = path.resolve(opts.home ?? cfg.home);
    this.socket = opts.socket ?? (opts.home ? path.join(this.home, "kindling.sock") : cfg.socket);
    this.autoStart = opts.autoStart ?? false;
    this.idleExitSeconds = opts.idleExitSeconds ?? 300;
  }

  // --- containers

  /** Creates and starts a container (detached); resolves once its process runs. */
  createContainer(req: ContainerCreateRequest): Promise<ContainerCreated> {
    return this.call("POST", "/v1/containers", req);
  }

  listContainers(opts: { all?: boolean } = {}): Promise<ContainerSummary[]> {
    return this.call("GET", `/v1/containers${opts.all ? "?all=true" : ""}`);
  }

  inspectContainer(ref: string): Promise<ContainerInspect> {
    return this.call("GET", `/v1/containers/${enc(ref)}`);
  }

  kill(ref: string, signal = "KILL"): Promise<ContainerInspect> {
    return this.call("POST", `/v1/containers/${enc(ref)}/kill?signal=${enc(signal)}`);
  }

  /** TERM, then KILL after `timeout` seconds (default: the container's stop timeout); resolves when ended. */
  stop(ref: string, timeout?: number): Promise<ContainerInspect> {
    return this.call(
      "POST",
      `/v1/containers/${enc(ref)}/stop${timeout === undefined ? "" : `?timeout=${timeout}`}`,
    );
  }

  wait(ref: string): Promise<ContainerExit> {
    return this.call("POST", `/v1/containers/${enc(ref)}/wait`);
  }

  remove(ref: string, opts: { force?: boolean } = {}): Promise<{ id: string; name: string }> {
    return this.call("DELETE", `/v1/containers/${enc(ref)}${opts.force ? "?force=true" : ""}`);
  }

  /** The container's output, from the start (or the last `tail` chunks); with follow, until it ends. */
  async *logs(
    ref: string,
    opts: { follow?: boolean; tail?: number; signal?: AbortSignal } = {},
  ): AsyncGenerator<LogEntry> {
    const q = new URLSearchParams();
    if (opts.follow) q.set("follow", "true");
    if (opts.tail !== undefined) q.set("tail", String(opts.tail));
    for await (const line of this.lines<LogLine>(`/v1/containers/${enc(ref)}/logs?${q}`, opts.signal)) {
      yield { time: new Date(line.time), stream: line.stream, data: Buffer.from(line.data, "base64") };
    }
  }

  /** Runs a process in a running container; resolves with its exit status once it ended. */
  async exec(ref: string, req: ExecRequest, io: ExecIo = {}): Promise<ExecExit> {
    return (await this.execSession(ref, req, io)).exit;
  }

  /** exec, with a handle to signal the process and (with `tty`) resize its terminal meanwhile. */
  async execSession(ref: string, req: ExecRequest, io: ExecIo = {}): Promise<ExecSession> {
    await this.ensureService();
    const { socket, head } = await upgrade(this.socket, `/v1/containers/${enc(ref)}/exec`);
    socket.write(encodeFrame(Frame.SPEC, JSON.stringify({ ...req, stdin: io.stdin !== undefined })));
    const exit = frameSession<ExecExit>(socket, head, io, {
      errorStatus: 409,
      closedEarly: "the exec connection closed before the process ended",
    });
    const send = (type: number, payload: string) => {
      if (!socket.destroyed) socket.write(encodeFrame(type, payload));
    };
    return {
      exit,
      signal: (name) => send(Frame.SIGNAL, name.replace(/^SIG/, "")),
      resize: (size) => send(Frame.RESIZE, JSON.stringify({ rows: size.rows, cols: size.cols })),
    };
  }

  /**
   * An attached run, as `kindling run` without -d: creates the container (attach: true), attaches,
   * and streams its output until it ends. Going away (process exit, closed socket) stops it.
   */
  async run(req: ContainerCreateRequest, io: AttachIo = {}): Promise<AttachSession> {
    trace("client: create sent");
    const created = await this.createContainer({
      ...req,
      attach: true,
      ...(io.stdin ? { interactive: true } : {}),
    });
    trace("client: created");
    const session = await this.attach(created.id, io, { direct: true });
    trace("client: attached");
    return session;
  }

  /**
   * Attaches to a container created with attach: true (it starts now). Through the service, or
   * with `direct` (the id in full) on its supervisor's socket: then the run does not depend on the
   * service, which may restart meanwhile.
   */
  async attach(ref: string, io: AttachIo = {}, opts: { direct?: boolean } = {}): Promise<AttachSession> {
    if (!opts.direct) await this.ensureService();
    const { socket, head } = opts.direct
      ? await upgrade(path.join(this.home, "containers", ref, "shim.sock"), "/attach")
      : await upgrade(this.socket, `/v1/containers/${enc(ref)}/attach`);
    // The supervisor closes the connection by exiting: resolved then, not at the EXIT frame.
    const exit = frameSession<AttachExit>(socket, head, io, {
      errorStatus: 500,
      closedEarly: "the container's supervisor went away before the run ended",
    });
    return {
      exit,
      signal: (name) => {
        if (!socket.destroyed) socket.write(encodeFrame(Frame.SIGNAL, name));
      },
      resize: (size) => {
        const payload = JSON.stringify({ rows: size.rows, cols: size.cols });
        if (!socket.destroyed) socket.write(encodeFrame(Frame.RESIZE, payload));
      },
    };
  }

  // --- images

  listImages(): Promise<ImageSummary[]> {
    return this.call("GET", "/v1/images");
  }

  inspectImage(name: string): Promise<ImageInspect> {
    return this.call("GET", `/v1/images/${enc(name)}`);
  }

  removeImage(name: string): Promise<{ name: string; freedBlobs: number; freedBytes: number }> {
    return this.call("DELETE", `/v1/images/${enc(name)}`);
  }

  pullImage(ref: string, opts: { insecure?: boolean } = {}): Promise<ImageInspect> {
    return this.call("POST", "/v1/images/pull", { ref, insecure: opts.insecure === true });
  }

  importImage(file: string, name: string): Promise<ImageInspect> {
    return this.call("POST", "/v1/images/import", { path: path.resolve(file), name });
  }

  // --- the service

  info(): Promise<Info> {
    return this.call("GET", "/v1/info");
  }

  async metrics(): Promise<string> {
    await this.ensureService();
    const r = await jsonRequest<string>(this.socket, "GET", "/metrics");
    return r.body;
  }

  /** Events as they happen (container create/start/exit/remove, image pull/import/remove). */
  events(signal?: AbortSignal): AsyncGenerator<ServiceEvent> {
    return this.lines<ServiceEvent>("/v1/events", signal);
  }

  // --- plumbing

  private async call<T>(method: string, urlPath: string, body?: unknown): Promise<T> {
    let r: { status: number; body: unknown };
    try {
      if (this.autoStart && !this.started) {
        // No ping first (a round trip on every command): the request itself finds out.
        try {
          r = await jsonRequest(this.socket, method, urlPath, { body });
          this.started = Promise.resolve();
        } catch (err) {
          if (!notListening(err)) throw err;
          await this.ensureService();
          r = await jsonRequest(this.socket, method, urlPath, { body });
        }
      } else {
        await this.ensureService();
        r = await jsonRequest(this.socket, method, urlPath, { body });
      }
    } catch (err) {
      if (err instanceof KindlingApiError) throw err;
      throw new KindlingApiError(
        0,
        "ECONN",
        `cannot reach the service at ${this.socket}: ${(err as Error).message}`,
      );
    }
    if (r.status >= 400) {
      const e = r.body as { code?: string; message?: string };
      throw new KindlingApiError(r.status, e.code ?? "EHTTP", e.message ?? `HTTP ${r.status}`);
    }
    return r.body as T;
  }

  private async *lines<T>(urlPath: string, signal?: AbortSignal): AsyncGenerator<T> {
    await this.ensureService();
    const res = await rawRequest(this.socket, "GET", urlPath, { signal }).catch((err) => {
      if (signal?.aborted) return undefined;
      throw err;
    });
    if (!res) return;
    if ((res.statusCode ?? 0) >= 400) {
      let text = "";
      for await (const c of res) text += c;
      const e = JSON.parse(text) as { code: string; message: string };
      throw new KindlingApiError(res.statusCode ?? 0, e.code, e.message);
    }
    let pending = "";
    try {
      for await (const chunk of res) {
        pending += chunk;
        const parts = pending.split("\n");
        pending = parts.pop() ?? "";
        for (const p of parts) if (p) yield JSON.parse(p) as T;
      }
    } catch (err) {
      if (!signal?.aborted) throw err;
    }
  }

  /** True if a service answers on the socket. */
  async ping(): Promise<boolean> {
    try {
      const r = await jsonRequest(this.socket, "GET", "/v1/ping", { timeoutMs: 10_000 });
      return r.status === 200;
    } catch {
      return false;
    }
  }

  private ensureService(): Promise<void> {
    if (!this.autoStart) return Promise.resolve();
    this.started ??= this.startIfNeeded().catch((err) => {
      this.started = undefined;
      throw err;
    });
    return this.started;
  }

  /**
   * Starts `kindling daemon --exit-idle` detached when nothing answers, and waits for it. Two clients
   * doing so at once start two; one takes the home's lock, the other exits, both clients use the first.
   */
  private async startIfNeeded(): Promise<void> {
    if (await this.connectable()) return;
    mkdirSync(this.home, { recursive: true });
    const logFd = openSync(path.join(this.home, "service.log"), "a");
    let said: Promise<string>;
    try {
      const args = [MAIN, "daemon", "--exit-idle", String(this.idleExitSeconds), "--ready-fd", "3"];
      const child = spawn(process.execPath, args, {
        detached: true,
        cwd: "/", // not the client's: it may be removed while the service runs
        // fd 3: its word once it listens or could not ("ok" / "error <message>"); its log may be unwritable
        stdio: ["ignore", logFd, logFd, "pipe"],
        env: { ...hostEnv(), KINDLING_HOME: this.home, KINDLING_SOCKET: this.socket },
      });
      child.unref();
      const ready = child.stdio[3] as Readable;
      said = new Promise((resolve) => {
        let text = "";
        ready.on("data", (d: Buffer) => {
          text += d.toString();
        });
        ready.on("close", () => resolve(text.split("\n")[0] ?? ""));
        ready.on("error", () => resolve(""));
      });
      void said.then(() => ready.destroy());
    } finally {
      closeSync(logFd);
    }
    // unref'd: a pending 20 s timer must not keep the CLI alive after its run ended
    const word = await Promise.race([said, sleep(20_000, "", { ref: false })]);
    // Another client's service may have won the home's lock meanwhile: then it answers.
    if (await this.connectable()) return;
    if (word.startsWith("error ")) throw new KindlingApiError(0, "ESERVICE", word.slice("error ".length));
    // "busy": that other service holds the lock but may still be adopting containers before it listens.
    const deadline = Date.now() + (word.startsWith("busy ") ? 20_000 : 5_000);
    while (Date.now() < deadline) {
      if (await this.connectable()) return;
      await sleep(25);
    }
    throw new KindlingApiError(
      0,
      "ECONN",
      `started a service for ${this.home}, but it did not answer on ${this.socket} within 20 s (see ${path.join(this.home, "service.log")})`,
    );
  }

  private async connectable(): Promise<boolean> {
    try {
      await jsonRequest(this.socket, "GET", "/v1/ping", { timeoutMs: 10_000 });
      return true;
    } catch {
      return false;
    }
  }
}

const enc = encodeURIComponent;

type Upgraded = Awaited<ReturnType<typeof upgradeRequest>>;

/** An upgraded exec/attach connection; a refusal as a KindlingApiError. */
async function upgrade(socketPath: string, urlPath: string): Promise<Upgraded> {
  try {
    return await upgradeRequest(socketPath, urlPath, EXEC_PROTOCOL);
  } catch (err) {
    const e = err as Error & { status?: number; code?: string };
    throw new KindlingApiError(e.status ?? 0, e.code ?? "ECONN", e.message);
  }
}

/**
 * The framed stream of an exec or an attach (src/service/frames.ts): our stdin out, output and notices
 * in; resolves with the EXIT frame's body once the connection closes, else rejects (ERROR frame as
 * `errorStatus`, or `closedEarly`).
 */
function frameSession<T>(
  socket: Upgraded["socket"],
  head: Buffer,
  io: AttachIo,
  opts: { errorStatus: number; closedEarly: string },
): Promise<T> {
  if (io.stdin) {
    io.stdin.on("data", (d: Buffer | string) => socket.write(encodeFrame(Frame.STDIN, Buffer.from(d))));
    io.stdin.on("end", () => socket.write(encodeFrame(Frame.STDIN_EOF)));
  }
  let first = true;
  return new Promise<T>((resolve, reject) => {
    let result: T | undefined;
    let failure: Error | undefined;
    readFrames(
      socket,
      (type, payload) => {
        if (first && (type === Frame.STDOUT || type === Frame.STDERR)) {
          first = false;
          trace("client: first output");
        }
        if (type === Frame.EXIT) trace("client: exit frame");
        if (type === Frame.STDOUT) io.stdout?.write(payload);
        else if (type === Frame.STDERR) io.stderr?.write(payload);
        else if (type === Frame.NOTICE) io.onNotice?.(payload.toString());
        else if (type === Frame.EXIT) result = JSON.parse(payload.toString()) as T;
        else if (type === Frame.ERROR) {
          const e = JSON.parse(payload.toString()) as { code: string; message: string };
          failure = new KindlingApiError(opts.errorStatus, e.code, e.message);
        }
      },
      head,
    );
    socket.on("error", (err) => {
      failure ??= err;
    });
    socket.on("close", () => {
      trace("client: stream closed");
      io.stdin?.unpipe?.();
      if (io.stdin && io.stdin !== process.stdin) io.stdin.destroy?.();
      else io.stdin?.pause();
      if (result) resolve(result);
      else reject(failure ?? new KindlingApiError(0, "ECONN", opts.closedEarly));
    });
  });
}

/** Nothing listens on the socket (no service yet): the request was never received. */
function notListening(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ECONNREFUSED";
}
