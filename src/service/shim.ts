/**
 * The supervisor of one container (`node shim.js <container dir>`), in the spirit of containerd's
 * shims: the service starts it detached (its own session), and it owns the container from start to
 * exit, whether a service runs or not. It runs the container with the same lifecycle as the runtime
 * tests use (src/runtime/lifecycle.ts: run dir, prepare, start, wait, release), writes the process's
 * stdout/stderr to log.jsonl, its states to state.json, and serves shim.sock:
 *   GET /state, GET /started (answers once it runs or ended), GET /wait (answers once it ended),
 *   POST /kill?signal=S, POST /stop?timeout=S (answers once ended), POST /exec and POST /attach
 *   (upgraded: frames.ts).
 * An attached run (`kindling run` without -d; record.attach) starts when its client attaches and
 * streams to it; a client that goes away stops it, as Ctrl-C does.
 * `node shim.js --spare <containers dir>/` is a spare (spare.ts): it loads everything, then reads
 * its container's directory from stdin (none: it exits); once that container ended and everything
 * it held is released, it says "idle" and takes the next one the service hands it (a reused
 * supervisor), until its stdin closes (the service stopped or died). `node shim.js <dir>`: one
 * container, then it exits.
 * Settings: the container's settings.json (written by the service from its client's environment),
 * pinned first thing for each container; the inherited environment is not read.
 * Its stdout is the startup handshake, per container: one line "ok" or "error <message>".
 */
import { appendFileSync, readFileSync } from "node:fs";
import { unlink } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import path from "node:path";
import { PassThrough, type Readable, Writable } from "node:stream";
import { type Config, useConfig } from "../config/index.js";
import { processStartTime } from "../host/process.js";
import { handOffsDone, startHandedOffReleases, teardownInBackground } from "../network/teardown.js";
import { resolveImage } from "../runtime/image.js";
import { type RunHandle, type RunResult, runContainer, type StopReason } from "../runtime/lifecycle.js";
import { checkTtySize } from "../runtime/pty.js";
import { deferRunDirRemoval, readOwner, removeDeferredRunDirs } from "../runtime/rundir.js";
import { runtimeFor } from "../runtime/runtimes.js";
import type { ExecProcess, TtySize } from "../runtime/types.js";
import { errorMessage, userMessage } from "../util/errors.js";
import { KindlingHome } from "../util/home.js";
import { trace, traceAt, traceTo } from "../util/trace.js";
import {
  type AttachExit,
  decodeResize,
  EXEC_PROTOCOL,
  type ExecExit,
  type ExecRequest,
  encodeFrame,
  Frame,
  readFrames,
  writeOutput,
} from "./frames.js";
import { LogWriter } from "./logfile.js";
import { SPARE_NICE, setProcessNice } from "./priority.js";
import {
  type ContainerRecord,
  type ContainerState,
  logFile,
  readContainer,
  removeContainerDir,
  settingsFile,
  shimLog,
  shimSocket,
  writeState,
} from "./records.js";
import { isSignalName } from "./signals.js";
import { warmUp } from "./warmup.js";

/** How long an attached run waits for its client before it gives up (status 125). */
const ATTACH_WAIT_MS = 60_000;
/** Containers one supervisor serves, one after the other, before it leaves (bounds what it may accumulate). */
const MAX_CONTAINERS = 100;

/** Notices of the supervisor itself (not of a container): to the container's shim.log, else stderr. */
function noteTo(dir: string, m: string): void {
  try {
    appendFileSync(dir ? shimLog(dir) : "/dev/stderr", `${new Date().toISOString()} ${m}\n`);
  } catch {
    // nowhere to say it
  }
}

/**
 * Lines to the service on stdout: "ok" / "error <message>" once per container (its start), "idle"
 * when free for the next one. A service that went away (EPIPE) is not an error.
 */
function tellService(line: string): void {
  try {
    process.stdout.write(`${line}\n`);
  } catch {
    // the service went away
  }
}
process.stdout.on("error", () => {});

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

/**
 * One container, from its directory to its end: everything a supervisor keeps about it. A
 * supervisor may serve several in turn (a reused spare): nothing of one outlives it, so a late
 * event of the last one (its client's socket closing) never reaches the next.
 */
class Supervision {
  state: ContainerState = { status: "starting" };
  handle?: RunHandle;
  private readonly waiters: (() => void)[] = [];
  private readonly startWaiters: (() => void)[] = [];
  private saving = Promise.resolve();
  private handshakeDone = false;
  /** A stop asked before the run began is kept and applied when it does (it then never starts). */
  private pendingStop?: { reason: StopReason; grace?: number };
  attachedClient?: (a: Attached) => void;
  /** `-t`: the terminal's size before the process starts (the record's, then the client's RESIZE). */
  ttySize?: TtySize;

  constructor(
    readonly dir: string,
    readonly home: KindlingHome,
  ) {}

  note(m: string): void {
    noteTo(this.dir, m);
  }

  setState(change: Partial<ContainerState>): Promise<void> {
    this.state = { ...this.state, ...change };
    const snapshot = this.state;
    this.saving = this.saving
      .then(() => writeState(this.dir, snapshot))
      .catch((err) => {
        this.note(`cannot write state: ${errorMessage(err)}`);
      });
    if (this.state.status === "running" || this.state.status === "exited")
      for (const w of this.startWaiters.splice(0)) w();
    return this.saving;
  }

  saved(): Promise<void> {
    return this.saving;
  }

  handshake(line: string): void {
    if (this.handshakeDone) return;
    this.handshakeDone = true;
    tellService(line);
  }

  ended(): Promise<void> {
    if (this.state.status === "exited") return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  wakeWaiters(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  started(): Promise<void> {
    if (this.state.status === "running" || this.state.status === "exited") return Promise.resolve();
    return new Promise<void>((r) => this.startWaiters.push(r));
  }

  stopRun(reason: StopReason, grace?: number): void {
    if (this.handle) this.handle.stop(reason, grace);
    else this.pendingStop ??= { reason, grace };
  }

  applyPendingStop(): void {
    if (this.pendingStop) this.handle?.stop(this.pendingStop.reason, this.pendingStop.grace);
  }

  async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://shim");
    if (req.method === "GET" && url.pathname === "/state") return json(res, 200, this.state);
    if (req.method === "GET" && url.pathname === "/started") {
      await this.started();
      return json(res, 200, this.state);
    }
    if (req.method === "GET" && url.pathname === "/wait") {
      await this.ended();
      return json(res, 200, this.state);
    }
    if (req.method === "POST" && url.pathname === "/kill") {
      const signal = url.searchParams.get("signal") ?? "KILL";
      if (!isSignalName(signal))
        return json(res, 400, { code: "EINVAL", message: `unknown signal ${signal}` });
      if (this.state.status !== "running" || !this.handle) {
        return json(res, 409, { code: "ENOTRUNNING", message: "the container is not running" });
      }
      await this.handle.kill(signal);
      return json(res, 200, this.state);
    }
    if (req.method === "POST" && url.pathname === "/stop") {
      const timeout = Number(url.searchParams.get("timeout") ?? "");
      if (this.state.status !== "exited") {
        await this.setState({ stoppedBy: "request" });
        this.stopRun("request", Number.isFinite(timeout) && timeout >= 0 ? timeout : undefined);
      }
      await this.ended();
      return json(res, 200, this.state);
    }
    json(res, 404, { code: "ENOENT", message: `no route ${req.method} ${url.pathname}` });
  }

  /** An exec over an upgraded connection: SPEC first, then stdin frames; output and EXIT back. */
  execSession(socket: Socket, head: Buffer): void {
    let proc: ExecProcess | undefined;
    let finished = false;
    const stdin = new PassThrough();
    const finish = (type: number, body: unknown) => {
      if (finished) return;
      finished = true;
      socket.end(encodeFrame(type, JSON.stringify(body)));
    };
    const sink = (type: number) =>
      new Writable({
        write(chunk: Buffer, _enc, cb) {
          if (!socket.destroyed) writeOutput(socket, type, chunk);
          cb();
        },
      });
    socket.on("error", () => {});
    socket.on("end", () => socket.destroy()); // a client that died half-closes: it went away
    socket.on("close", () => {
      // The client went away: its exec goes with it.
      if (!finished) proc?.kill("KILL");
      stdin.end();
    });
    let gotSpec = false;
    const start = async (spec: ExecRequest) => {
      const handle = this.handle;
      if (!handle || this.state.status !== "running") {
        return finish(Frame.ERROR, { code: "ENOTRUNNING", message: "the container is not running" });
      }
      try {
        proc = await handle.exec(
          { args: spec.cmd, env: spec.env ?? [], cwd: spec.workdir },
          {
            stdin: spec.stdin ? stdin : undefined,
            stdout: sink(Frame.STDOUT),
            stderr: sink(Frame.STDERR),
            ...(spec.tty ? { tty: checkTtySize(spec.ttySize) } : {}),
          },
        );
      } catch (err) {
        const message = errorMessage(err);
        // As Docker: a command that is not there 127, one that cannot be run 126.
        if (/^cannot (execute|chdir to|set uid\/gid for) /.test(message)) {
          const notFound = /^cannot execute .*: (No such file or directory|Not a directory)$/.test(message);
          return finish(Frame.EXIT, { status: notFound ? 127 : 126, message } satisfies ExecExit);
        }
        return finish(Frame.ERROR, { code: "EEXEC", message });
      }
      try {
        const exit = await proc.exited;
        // runc exec reports a program it could not start as its own failure: 127/126 as for run
        if (exit.message && (exit.status === 126 || exit.status === 127)) {
          return finish(Frame.EXIT, { status: exit.status, message: exit.message } satisfies ExecExit);
        }
        finish(Frame.EXIT, { status: exit.status, signal: exit.signal } satisfies ExecExit);
      } catch (err) {
        finish(Frame.ERROR, { code: "EEXEC", message: errorMessage(err) });
      }
    };
    readFrames(
      socket,
      (type, payload) => {
        if (!gotSpec) {
          gotSpec = true;
          if (type !== Frame.SPEC)
            return finish(Frame.ERROR, { code: "EINVAL", message: "expected the exec spec first" });
          let spec: ExecRequest;
          try {
            spec = JSON.parse(payload.toString()) as ExecRequest;
          } catch {
            return finish(Frame.ERROR, { code: "EINVAL", message: "the exec spec is not JSON" });
          }
          void start(spec);
          return;
        }
        if (type === Frame.STDIN) stdin.write(payload);
        else if (type === Frame.STDIN_EOF) stdin.end();
        else if (type === Frame.SIGNAL) {
          const sig = payload.toString();
          if (isSignalName(sig)) proc?.kill(sig);
        } else if (type === Frame.RESIZE) {
          const size = decodeResize(payload);
          if (size) proc?.resize?.(size);
        }
      },
      head,
    );
  }
}

/** The attached client of an attached run: its stdin, its Ctrl-C, and where output and notices go. */
class Attached {
  gone = false;

  constructor(
    run: Supervision,
    readonly socket: Socket,
    head: Buffer,
    /** Where its STDIN frames go (the container's stdin with -i). */
    readonly stdin: PassThrough,
  ) {
    socket.on("error", () => {});
    // a client that died half-closes (our server allows that): its end is its going away
    socket.on("end", () => socket.destroy());
    socket.on("close", () => {
      this.gone = true;
      this.stdin.end();
      // The client went away (killed, disconnected): stop the container, as a hangup does.
      if (run.state.status !== "exited") run.stopRun("SIGHUP");
    });
    readFrames(
      socket,
      (type, payload) => {
        if (type === Frame.STDIN) this.stdin.write(payload);
        else if (type === Frame.STDIN_EOF) this.stdin.end();
        else if (type === Frame.SIGNAL) {
          const sig = payload.toString();
          if (sig === "SIGINT" || sig === "SIGTERM" || sig === "SIGHUP") run.stopRun(sig);
        } else if (type === Frame.RESIZE) {
          const size = decodeResize(payload);
          if (size && run.handle) run.handle.resize(size);
          else if (size) run.ttySize = size; // the size it starts with
        }
      },
      head,
    );
  }

  send(type: number, payload: Buffer | string): boolean {
    if (this.gone || this.socket.destroyed) return true;
    return typeof payload === "string"
      ? this.socket.write(encodeFrame(type, payload))
      : writeOutput(this.socket, type, payload);
  }

  /** Relays a stream of the process, with backpressure from the client's socket. */
  relay(stream: Readable, type: number): void {
    stream.on("data", (d: Buffer) => {
      if (!this.send(type, d)) {
        stream.pause();
        this.socket.once("drain", () => stream.resume());
      }
    });
  }

  /** The last frame, then the end of the stream; resolves once it is handed to the kernel. */
  finish(type: number, body: unknown): Promise<void> {
    if (this.gone || this.socket.destroyed) return Promise.resolve();
    // ended here: this process may go on to supervise the next container
    return new Promise((resolve) =>
      this.socket.end(encodeFrame(type, JSON.stringify(body)), () => resolve()),
    );
  }
}

/** The container being supervised now (signals to this process stop it). */
let current: Supervision | undefined;
for (const s of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
  process.on(s, () => {
    if (current) current.stopRun("request");
    else process.exit(0); // idle: nothing to stop
  });
}

/**
 * A spare's channel from the service: its stdin, one container directory a line. The service keeps
 * it open while it runs, so a supervisor whose container ended can take the next one ("idle" on
 * stdout); its end (the service stopped or died) means no more.
 */
class ServiceLines {
  private text = "";
  private waiting?: (line: string | undefined) => void;
  private closed = false;

  constructor() {
    process.stdin.on("data", (d: Buffer) => {
      this.text += d.toString();
      this.deliver();
    });
    const end = () => {
      this.closed = true;
      this.deliver();
    };
    process.stdin.on("end", end);
    process.stdin.on("error", end);
    process.stdin.on("close", end);
  }

  /** The service is gone (or stopped handing containers): this supervisor takes no next one. */
  get gone(): boolean {
    return this.closed;
  }

  private deliver(): void {
    if (!this.waiting) return;
    const nl = this.text.indexOf("\n");
    if (nl >= 0) {
      const line = this.text.slice(0, nl);
      this.text = this.text.slice(nl + 1);
      const w = this.waiting;
      this.waiting = undefined;
      w(line);
    } else if (this.closed) {
      const w = this.waiting;
      this.waiting = undefined;
      w(undefined);
    }
  }

  /** The next container's directory; undefined once the service closed the channel. */
  next(): Promise<string | undefined> {
    return new Promise((resolve) => {
      this.waiting = resolve;
      this.deliver();
    });
  }
}

/** When a spare was handed its container (for the trace). */
let handedAt: number | undefined;

/** Waits for the service to hand this spare its next container (idle at a low priority meanwhile). */
async function nextFromService(lines: ServiceLines, warm?: () => void): Promise<string | undefined> {
  setProcessNice(SPARE_NICE);
  const line = await lines.next();
  warm?.();
  if (line === undefined) return undefined;
  setProcessNice(0);
  handedAt = performance.timeOrigin + performance.now();
  return path.resolve(line);
}

/** Runs one container, from its directory to its end; resolves once its client learnt the end. */
async function supervise(dir: string): Promise<void> {
  const home = new KindlingHome(path.dirname(path.dirname(dir)));
  const run = new Supervision(dir, home);
  current = run;
  traceTo(undefined, "supervisor");
  try {
    const settings = JSON.parse(readFileSync(settingsFile(dir), "utf8")) as Config;
    useConfig(Object.freeze(settings));
    traceTo(settings.trace, "supervisor");
    if (handedAt === undefined) traceAt(performance.timeOrigin, "supervisor: process start");
    else traceAt(handedAt, "supervisor: spare handed its container");
    trace("supervisor: settings pinned");
  } catch (err) {
    // A record from a service before pinned settings: the inherited environment decides.
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    useConfig(undefined);
  }
  handedAt = undefined;
  const stored = await readContainer(dir);
  if (!stored) throw new Error(`no container record in ${dir}`);
  const record: ContainerRecord = stored.record;
  const startTime = processStartTime(process.pid);
  await run.setState({ status: "starting", shimPid: process.pid, shimStartTime: startTime });
  trace("supervisor: record read, state written");

  // What the client sends to the container's stdin (-i), also before it attached.
  const clientStdin = new PassThrough();
  const server = createServer((req, res) => {
    run.route(req, res).catch((err) => json(res, 500, { code: "EINTERNAL", message: errorMessage(err) }));
  });
  let attachTaken = false;
  server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
    const url = new URL(req.url ?? "/", "http://shim");
    const kind = url.pathname === "/exec" ? "exec" : url.pathname === "/attach" ? "attach" : undefined;
    if (req.method !== "POST" || !kind || req.headers.upgrade !== EXEC_PROTOCOL) {
      socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
      return;
    }
    if (kind === "attach" && (!record.attach || attachTaken || !run.attachedClient)) {
      const body = JSON.stringify({
        code: "EATTACHED",
        message: record.attach
          ? "the container has its client already"
          : "the container was not created to be attached (run -d)",
      });
      socket.end(
        `HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
      );
      return;
    }
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${EXEC_PROTOCOL}\r\nConnection: Upgrade\r\n\r\n`,
    );
    if (kind === "exec") return run.execSession(socket, head);
    attachTaken = true;
    run.attachedClient?.(new Attached(run, socket, head, clientStdin));
  });
  const sock = shimSocket(dir);
  await unlink(sock).catch(() => {});
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(sock, () => resolve());
  });

  let client: Attached | undefined;
  let attachedClientOrTimeout: Promise<Attached | undefined> = Promise.resolve(undefined);
  const log = new LogWriter(logFile(dir));
  let startedAt = 0;
  let result: RunResult | undefined;
  let failure: string | undefined;
  // An attached run's status goes to its client once the container is released; the network's
  // teardown (CNI DEL, the namespace) is handed to a process of its own, as the CLI's run did, which
  // starts once this container is done here (below; or this process exited).
  teardownInBackground(record.attach === true, { atExit: true });
  // the run dir's files go after the end is reported (below)
  deferRunDirRemoval(true);
  try {
    // An attached run prepares (rootfs, bundle) while its client attaches, and starts once it has:
    // the service answers its client as soon as we listen.
    let attached: Promise<Attached | undefined> | undefined;
    if (record.attach) {
      attached = attachedClientOrTimeout = new Promise<Attached | undefined>((resolve) => {
        run.attachedClient = resolve;
        setTimeout(() => resolve(undefined), ATTACH_WAIT_MS).unref();
      });
      trace("supervisor: listening");
      run.handshake("ok"); // the service answers its client, which attaches now
    }
    // Notices before the client attached wait for it.
    const early: string[] = [];
    const gate = attached?.then((c) => {
      trace("supervisor: client attached");
      client = c;
      if (!c) return run.stopRun("request"); // it never starts; reported below
      for (const m of early.splice(0)) c.send(Frame.NOTICE, m);
    });
    const began = Date.now();
    const options = record.options;
    const image = await resolveImage(home, record.image);
    trace("supervisor: image resolved");
    const runtime = await runtimeFor(options);
    run.handle = runContainer({
      home,
      options,
      image,
      runtime,
      stdio: {
        stdin: record.attach && options.interactive ? clientStdin : "ignore",
        stdout: "pipe",
        stderr: "pipe",
        ...(options.tty ? { tty: checkTtySize(run.ttySize ?? record.ttySize) } : {}),
      },
      notify: (m) => {
        run.note(m);
        if (client) client.send(Frame.NOTICE, m);
        else if (attached) early.push(m);
      },
      id: record.id,
      startWhen: gate,
    });
    run.applyPendingStop();
    const started = await run.handle.started;
    trace("supervisor: started");
    startedAt = Date.now();
    for (const [stream, name, type] of [
      [started.stdout, "stdout", Frame.STDOUT],
      [started.stderr, "stderr", Frame.STDERR],
    ] as const) {
      if (!stream) continue;
      stream.once("data", () => trace(`supervisor: first ${name}`));
      stream.on("data", (d: Buffer) => log.write(name, d));
      client?.relay(stream, type);
    }
    await run.setState({
      status: "running",
      startedAt: new Date(startedAt).toISOString(),
      prepMs: started.prepMs ?? startedAt - began - started.waitedMs,
      bootMs: started.bootMs,
      network: (await readOwner(path.join(home.runs, record.id)))?.network,
    });
    run.handshake("ok");
    result = await run.handle.result;
    trace("supervisor: released (run result)");
    // The streams end before the result: all output is in the log.
    await run.setState({
      status: "exited",
      finishedAt: new Date().toISOString(),
      exitCode: result.status,
      signal: result.signal,
      error: result.message,
      stoppedBy: run.state.stoppedBy ?? result.stoppedBy,
      firstOutputMs: log.firstWriteAt !== undefined ? log.firstWriteAt - startedAt : undefined,
    });
  } catch (err) {
    failure = userMessage(err);
    if (record.attach && !client) {
      // Failed while its client was still on its way: it learns why once attached (or never came).
      client = await attachedClientOrTimeout;
      if (!client) failure = `no client attached within ${ATTACH_WAIT_MS / 1000} s`;
    }
    // What it acquired is released before its end is reported.
    await run.handle?.result.catch(() => undefined);
    run.note(`container failed: ${failure}`);
    await run.setState({
      status: "exited",
      finishedAt: new Date().toISOString(),
      exitCode: 125,
      error: failure,
    });
    run.handshake(`error ${failure.split("\n")[0]}`);
  }
  await log.close();
  await run.saved();
  trace("supervisor: state exited written, log closed");
  run.wakeWaiters();
  // The answers to /wait and /stop are on their way on their connections (this process leaves only
  // after a pause for them: main); new ones are refused, and the socket's file goes (with --rm, with the dir).
  server.close();
  setTimeout(() => server.closeAllConnections(), 200).unref();
  if (record.autoRemove) await removeContainerDir(dir);
  else await unlink(sock).catch(() => {});
  trace("supervisor: socket closed, container dir removed with --rm");
  // Last: the attached client learns the end once everything is released (the CLI exits on it).
  if (client) {
    if (failure !== undefined || !result) {
      await client.finish(Frame.ERROR, { code: "ERUN", message: failure ?? "the container did not run" });
    } else {
      await client.finish(Frame.EXIT, {
        id: record.id,
        status: result.status,
        ...(result.signal ? { signal: result.signal } : {}),
        ...(result.message ? { message: result.message } : {}),
        ...(result.stoppedBy ? { stoppedBy: result.stoppedBy } : {}),
        ...(result.stoppedBy === "timeout" && record.options.timeoutSeconds !== undefined
          ? { timeoutSeconds: record.options.timeoutSeconds }
          : {}),
      } satisfies AttachExit);
    }
  }
  // the network's release process owns its record now; its DEL starts (src/network/teardown.ts)
  await handOffsDone();
  startHandedOffReleases();
  await removeDeferredRunDirs();
  trace("supervisor: done");
  traceTo(undefined, "supervisor");
  current = undefined;
}

/**
 * `node shim.js <container dir>`: one container, then exit. `node shim.js --spare <containers dir>/`:
 * a spare: it rehearses (warmup.ts) until the service hands it a container on stdin; once that one
 * ended it says "idle" and takes the next (a reused supervisor: no Node start, no module loading, its
 * code warm: bench/cli-cost.ts), until the service closes its stdin or it has served MAX_CONTAINERS.
 */
async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args[0] !== "--spare") {
    await supervise(path.resolve(args[0] ?? ""));
    return;
  }
  const lines = new ServiceLines();
  // Idle: rehearse the start of a container (warmup.ts), until one comes, at a low priority
  // (priority.ts: also the threads started since the service lowered ours).
  setProcessNice(SPARE_NICE);
  const warm = warmUp();
  let dir = await nextFromService(lines, () => warm.stop());
  if (dir === undefined) await warm.done; // a spare nobody needed
  for (let served = 0; dir !== undefined; ) {
    await supervise(dir);
    if (++served >= MAX_CONTAINERS || lines.gone) break;
    tellService("idle");
    dir = await nextFromService(lines);
  }
}

main().then(
  async () => {
    await handOffsDone(); // the network's release process owns its record now (src/network/teardown.ts)
    await removeDeferredRunDirs();
    await new Promise((r) => setTimeout(r, 50)); // the last answers (/wait, /stop) go out
    trace("supervisor: exit");
    process.exit(0);
  },
  (err) => {
    const dir = current?.dir ?? "";
    noteTo(dir, `supervisor failed: ${errorMessage(err)}`);
    if (current) current.handshake(`error ${errorMessage(err)}`);
    else tellService(`error ${errorMessage(err)}`);
    setTimeout(() => process.exit(1), 50);
  },
);
