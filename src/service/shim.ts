/**
 * The supervisor of one container (`node shim.js <container dir>`), in the spirit of containerd's
 * shims: the service starts it detached (its own session), and it owns the container from start to
 * exit, whether a service runs or not. It runs the container with the same lifecycle as an attached
 * `kindling run` (src/runtime/lifecycle.ts: run dir, prepare, start, wait, release), writes the
 * process's stdout/stderr to log.jsonl, its states to state.json, and serves shim.sock:
 *   GET /state, GET /wait (answers once the container ended), POST /kill?signal=S,
 *   POST /stop?timeout=S (answers once ended), POST /exec (upgraded: frames.ts).
 * Its stdout is the startup handshake: one line "ok" or "error <message>", then it is closed.
 * When the container has ended and everything it held is released, the supervisor exits.
 */
import { closeSync } from "node:fs";
import { unlink } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import path from "node:path";
import { PassThrough, Writable } from "node:stream";
import { processStartTime } from "../host/process.js";
import { resolveImage } from "../runtime/image.js";
import { type RunHandle, runContainer } from "../runtime/lifecycle.js";
import { readOwner } from "../runtime/rundir.js";
import { runtimeFor } from "../runtime/runtimes.js";
import type { ExecProcess } from "../runtime/types.js";
import { errorMessage } from "../util/errors.js";
import { KindlingHome } from "../util/home.js";
import {
  EXEC_PROTOCOL,
  type ExecExit,
  type ExecRequest,
  encodeFrame,
  Frame,
  readFrames,
  writeOutput,
} from "./frames.js";
import { LogWriter } from "./logfile.js";
import {
  type ContainerRecord,
  type ContainerState,
  logFile,
  readContainer,
  removeContainerDir,
  shimSocket,
  writeState,
} from "./records.js";
import { isSignalName } from "./signals.js";

const dir = path.resolve(process.argv[2] ?? "");
const home = new KindlingHome(path.dirname(path.dirname(dir)));
let state: ContainerState = { status: "starting" };
let handle: RunHandle | undefined;
const waiters: (() => void)[] = [];
const note = (m: string) => process.stderr.write(`${new Date().toISOString()} ${m}\n`);

let saving = Promise.resolve();
function setState(change: Partial<ContainerState>): Promise<void> {
  state = { ...state, ...change };
  const snapshot = state;
  saving = saving
    .then(() => writeState(dir, snapshot))
    .catch((err) => {
      note(`cannot write state: ${errorMessage(err)}`);
    });
  return saving;
}

let handshakeDone = false;
function handshake(line: string): void {
  if (handshakeDone) return;
  handshakeDone = true;
  try {
    process.stdout.write(`${line}\n`, () => {
      try {
        closeSync(1); // the service may be gone later: never write to its pipe again
      } catch {
        // already closed
      }
    });
  } catch {
    // the service went away before reading it
  }
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

function ended(): Promise<void> {
  if (state.status === "exited") return Promise.resolve();
  return new Promise((resolve) => waiters.push(resolve));
}

async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? "/", "http://shim");
  if (req.method === "GET" && url.pathname === "/state") return json(res, 200, state);
  if (req.method === "GET" && url.pathname === "/wait") {
    await ended();
    return json(res, 200, state);
  }
  if (req.method === "POST" && url.pathname === "/kill") {
    const signal = url.searchParams.get("signal") ?? "KILL";
    if (!isSignalName(signal)) return json(res, 400, { code: "EINVAL", message: `unknown signal ${signal}` });
    if (state.status !== "running" || !handle) {
      return json(res, 409, { code: "ENOTRUNNING", message: "the container is not running" });
    }
    await handle.kill(signal);
    return json(res, 200, state);
  }
  if (req.method === "POST" && url.pathname === "/stop") {
    const timeout = Number(url.searchParams.get("timeout") ?? "");
    if (state.status === "running" && handle) {
      await setState({ stoppedBy: "request" });
      handle.stop("request", Number.isFinite(timeout) && timeout >= 0 ? timeout : undefined);
    }
    await ended();
    return json(res, 200, state);
  }
  json(res, 404, { code: "ENOENT", message: `no route ${req.method} ${url.pathname}` });
}

/** An exec over an upgraded connection: SPEC first, then stdin frames; output and EXIT back. */
function execSession(socket: Socket, head: Buffer): void {
  socket.write(
    `HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${EXEC_PROTOCOL}\r\nConnection: Upgrade\r\n\r\n`,
  );
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
  socket.on("close", () => {
    // The client went away: its exec goes with it.
    if (!finished) proc?.kill("KILL");
    stdin.end();
  });
  let gotSpec = false;
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
      }
    },
    head,
  );
  const start = async (spec: ExecRequest) => {
    if (!handle || state.status !== "running") {
      return finish(Frame.ERROR, { code: "ENOTRUNNING", message: "the container is not running" });
    }
    try {
      proc = await handle.exec(
        { args: spec.cmd, env: spec.env ?? [], cwd: spec.workdir },
        { stdin: spec.stdin ? stdin : undefined, stdout: sink(Frame.STDOUT), stderr: sink(Frame.STDERR) },
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
      finish(Frame.EXIT, { status: exit.status, signal: exit.signal } satisfies ExecExit);
    } catch (err) {
      finish(Frame.ERROR, { code: "EEXEC", message: errorMessage(err) });
    }
  };
}

async function main(): Promise<void> {
  const stored = await readContainer(dir);
  if (!stored) throw new Error(`no container record in ${dir}`);
  const record: ContainerRecord = stored.record;
  const startTime = processStartTime(process.pid);
  await setState({ status: "starting", shimPid: process.pid, shimStartTime: startTime });

  const server = createServer((req, res) => {
    route(req, res).catch((err) => json(res, 500, { code: "EINTERNAL", message: errorMessage(err) }));
  });
  server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
    const url = new URL(req.url ?? "/", "http://shim");
    if (req.method !== "POST" || url.pathname !== "/exec" || req.headers.upgrade !== EXEC_PROTOCOL) {
      socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
      return;
    }
    execSession(socket, head);
  });
  const sock = shimSocket(dir);
  await unlink(sock).catch(() => {});
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(sock, () => resolve());
  });

  const log = new LogWriter(logFile(dir));
  const began = Date.now();
  let startedAt = 0;
  try {
    const options = record.options;
    handle = runContainer({
      home,
      options,
      image: await resolveImage(home, record.image),
      runtime: await runtimeFor(options),
      stdio: { stdin: "ignore", stdout: "pipe", stderr: "pipe" },
      notify: note,
      id: record.id,
    });
    for (const s of ["SIGTERM", "SIGINT", "SIGHUP"] as const) process.on(s, () => handle?.stop("request"));
    const started = await handle.started;
    startedAt = Date.now();
    started.stdout?.on("data", (d: Buffer) => log.write("stdout", d));
    started.stderr?.on("data", (d: Buffer) => log.write("stderr", d));
    await setState({
      status: "running",
      startedAt: new Date(startedAt).toISOString(),
      prepMs: started.prepMs ?? startedAt - began,
      bootMs: started.bootMs,
      network: (await readOwner(path.join(home.runs, record.id)))?.network,
    });
    handshake("ok");
    const result = await handle.result;
    // The streams end before the result: all output is in the log.
    await setState({
      status: "exited",
      finishedAt: new Date().toISOString(),
      exitCode: result.status,
      signal: result.signal,
      error: result.message,
      stoppedBy: state.stoppedBy ?? result.stoppedBy,
      firstOutputMs: log.firstWriteAt !== undefined ? log.firstWriteAt - startedAt : undefined,
    });
  } catch (err) {
    const message = errorMessage(err);
    note(`container failed: ${message}`);
    await setState({ status: "exited", finishedAt: new Date().toISOString(), exitCode: 125, error: message });
    handshake(`error ${message.split("\n")[0]}`);
  }
  await log.close();
  await saving;
  for (const w of waiters.splice(0)) w();
  // Let answers to /wait and /stop go out, then leave.
  server.close();
  setTimeout(() => server.closeAllConnections(), 200).unref();
  await new Promise((r) => setTimeout(r, 50));
  await unlink(sock).catch(() => {});
  if (record.autoRemove) await removeContainerDir(dir);
}

main().then(
  () => process.exit(0),
  (err) => {
    note(`supervisor failed: ${errorMessage(err)}`);
    handshake(`error ${errorMessage(err)}`);
    setTimeout(() => process.exit(1), 50);
  },
);
