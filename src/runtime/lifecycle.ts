import { mkdir } from "node:fs/promises";
import type { Readable } from "node:stream";
import { errorMessage, KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { Scope } from "../util/scope.js";
import { trace } from "../util/trace.js";
import { cleanupStaleRuns, RunDir } from "./rundir.js";
import { signalNumber } from "./status.js";
import type {
  Container,
  ExecIo,
  ExecProcess,
  ExecSpec,
  ExitStatus,
  KillSignal,
  ResolvedImage,
  RunOptions,
  RunStdio,
  Runtime,
  TtySize,
} from "./types.js";

export interface RunRequest {
  home: KindlingHome;
  options: RunOptions;
  image: ResolvedImage;
  runtime: Runtime;
  /** Default: stdout and stderr inherited; stdin inherited with -i, else /dev/null. */
  stdio?: Partial<RunStdio>;
  /** Kindling's own notices (stopping, timeout, cleanup problems). Default: stderr. */
  notify?: (message: string) => void;
  /** The container's id (a service names it before it runs); default: a fresh one. */
  id?: string;
  /**
   * The process starts once this resolves (everything before it is prepared meanwhile): an
   * attached run prepares while its client attaches. A stop() before then: it never starts.
   */
  startWhen?: Promise<unknown>;
}

/** Why kindling stopped the container, if it did. */
export type StopReason = "timeout" | "SIGINT" | "SIGTERM" | "SIGHUP" | "request";

export interface RunResult extends ExitStatus {
  id: string;
  stoppedBy?: StopReason;
}

export interface StartedRun {
  id: string;
  stdout: Readable | null;
  stderr: Readable | null;
  /** VM runtimes: host-side rootfs preparation, and VMM spawn to agent ready (ms). */
  prepMs?: number;
  bootMs?: number;
  /** How long the prepared container waited for `startWhen` (ms; 0 without one). */
  waitedMs: number;
}

export interface RunHandle {
  /** Resolves once the process runs, with its piped streams (null where not piped). */
  started: Promise<StartedRun>;
  /** Resolves after the container ended and everything it held was released. */
  result: Promise<RunResult>;
  /**
   * Stops the container: TERM, then KILL after the grace period; a second stop kills at once.
   * Before the process started, it is not started at all.
   */
  stop(reason: StopReason, graceSeconds?: number): void;
  /** Sends a signal to the running process (before it runs: an error). */
  kill(signal: KillSignal): Promise<void>;
  /** Runs another process in the running container. */
  exec(spec: ExecSpec, io: ExecIo): Promise<ExecProcess>;
  /** `-t`: the terminal's new size (before the process starts: the size it starts with). */
  resize(size: TtySize): void;
}

/** Writes a notice to stderr; a closed stderr (EPIPE) must not abort the run and its cleanup. */
function writeNotice(message: string): void {
  if (process.stderr.listenerCount("error") === 0) process.stderr.on("error", () => {});
  process.stderr.write(`kindling: ${message}\n`);
}

/**
 * Runs one container through its runtime: clean up dead runs, make the run dir, prepare, start,
 * wait (with --timeout and stop requests), and release everything on every path.
 */
export function runContainer(req: RunRequest): RunHandle {
  const notify = req.notify ?? writeNotice;
  const stdio: RunStdio = {
    stdin: req.options.interactive ? "inherit" : "ignore",
    stdout: "inherit",
    stderr: "inherit",
    ...req.stdio,
  };
  let container: Container | undefined;
  let stopReason: StopReason | undefined;
  let finished = false;
  let killTimer: NodeJS.Timeout | undefined;
  let resolveStarted!: (v: StartedRun) => void;
  let rejectStarted!: (err: unknown) => void;
  const started = new Promise<StartedRun>((res, rej) => {
    resolveStarted = res;
    rejectStarted = rej;
  });
  started.catch(() => {}); // callers that only await `result` need not handle it

  const kill = (signal: "TERM" | "KILL") => {
    container?.kill(signal).catch((err) => notify(`cannot send ${signal}: ${errorMessage(err)}`));
  };

  let graceSeconds = req.options.stopGraceSeconds;
  const stop = (reason: StopReason, grace?: number) => {
    if (finished) return; // it ended already; cleanup is under way
    if (stopReason !== undefined) {
      // Asked again (a second Ctrl-C): no more grace.
      if (container) kill("KILL");
      return;
    }
    stopReason = reason;
    if (grace !== undefined) graceSeconds = grace;
    // Not started: if prepare is still running nothing starts; if start is, see below.
    if (container) beginStop(container);
  };

  const beginStop = (running: Container) => {
    const reason = stopReason!;
    const grace = graceSeconds;
    notify(
      `${reason === "timeout" ? `timeout after ${req.options.timeoutSeconds}s` : reason}: stopping container ${running.id} (TERM, KILL after ${grace}s)`,
    );
    kill("TERM");
    killTimer = setTimeout(() => {
      notify(`container ${running.id} did not stop within ${grace}s: sending KILL`);
      kill("KILL");
    }, grace * 1000);
  };

  const result = Scope.with(async (scope): Promise<RunResult> => {
    await mkdir(req.home.runs, { recursive: true });
    // What dead runs left is released while this one prepares (it touches only runs whose owner
    // is gone, never this one): settled before the process starts.
    const cleaning = cleanupStaleRuns(req.home).then(
      (stale) => {
        for (const e of stale.errors) notify(`cleanup of a dead run: ${e}`);
        trace("run: stale runs checked");
      },
      (err) => notify(`cleanup of dead runs: ${errorMessage(err)}`),
    );
    scope.defer("the cleanup of dead runs", () => cleaning); // never left running

    await req.runtime.checkHost();
    trace("run: host checked");
    const runDir = await RunDir.create(req.home, scope, req.runtime.name, req.image.name, req.id);
    trace("run: run dir made");
    const prepared = await req.runtime.prepare(
      { id: runDir.id, runDir, image: req.image, options: req.options, stdio },
      scope,
    );
    trace("run: prepared");
    scope.defer(`container ${runDir.id}`, () => prepared.delete());
    await cleaning;
    let waitedMs = 0;
    if (req.startWhen) {
      const t0 = Date.now();
      await req.startWhen;
      waitedMs = Date.now() - t0;
      trace("run: may start");
    }
    if (stopReason !== undefined) {
      // Stopped before it ran: report as a shell would for the signal kindling received.
      const signal = stopReason === "timeout" || stopReason === "request" ? "SIGTERM" : stopReason;
      rejectStarted(new KindlingError(`stopped (${stopReason}) before the container started`));
      return { id: runDir.id, status: 128 + signalNumber(signal), signal, stoppedBy: stopReason };
    }
    const streams = await prepared.start();
    trace("run: started");
    container = prepared;
    resolveStarted({
      id: runDir.id,
      ...streams,
      prepMs: prepared.prepMs,
      bootMs: prepared.bootMs,
      waitedMs,
    });
    if (stopReason !== undefined) beginStop(prepared); // asked while it was starting

    const timeout =
      req.options.timeoutSeconds === undefined
        ? undefined
        : setTimeout(() => stop("timeout"), req.options.timeoutSeconds * 1000);
    try {
      const status = await prepared.wait();
      trace("run: process ended");
      if (status.problem && status.status !== 0) {
        throw new KindlingError(`${status.problem}; the process ended with status ${status.status}`);
      }
      if (status.problem) notify(`warning: ${status.problem}`);
      return { id: runDir.id, ...status, stoppedBy: stopReason };
    } finally {
      finished = true;
      clearTimeout(timeout);
      clearTimeout(killTimer);
    }
  });
  result.catch((err) => rejectStarted(err));
  const running = (): Container => {
    if (!container || finished) throw new KindlingError("the container is not running");
    return container;
  };
  return {
    started,
    result,
    stop,
    kill: async (signal) => running().kill(signal),
    resize: (size) => {
      if (container && !finished) container.resize?.(size);
      else if (!container) stdio.tty = size; // read by start()
    },
    exec: async (spec, io) => {
      const c = running();
      if (!c.exec) throw new KindlingError(`exec is not supported by runtime ${req.runtime.name}`);
      return c.exec(spec, io);
    },
  };
}
