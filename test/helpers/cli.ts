/** The CLI as a child process, for tests and benchmarks: one spawn helper with a bounded wait. */
import { type ChildProcess, spawn } from "node:child_process";
import { constants } from "node:os";
import path from "node:path";
import { within } from "./bounded.js";
import { REPO } from "./fixtures.js";

/** The repository's `bin/kindling` (it loads the build from dist/). */
export const KINDLING = path.join(REPO, "bin", "kindling");

export interface CliOptions {
  /** KINDLING_HOME of the child (a path or a KindlingHome); unset: inherited from this process. */
  home?: string | { root: string };
  /** Added to (and overriding) this process's environment. */
  env?: Record<string, string>;
  /** Replaces the environment entirely (then `home` and `env` are added to it). */
  baseEnv?: Record<string, string | undefined>;
  /** Bytes written to stdin (then it is closed). */
  input?: string | Buffer;
  cwd?: string;
  /** Another executable than the repository's bin/kindling (e.g. an installed one). */
  bin?: string;
  /** How long the child may run before it is killed and the call fails; default 240 s. */
  timeoutMs?: number;
}

export interface CliResult {
  /** The exit status; 128 + the signal number when a signal ended it. */
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * `kindling ARGS`; never throws on a non-zero status. A child still running after `timeoutMs` is
 * killed (SIGKILL) and the call fails with a message naming the command and its stderr so far.
 */
export function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  const timeoutMs = opts.timeoutMs ?? 240_000;
  const env: Record<string, string | undefined> = { ...(opts.baseEnv ?? process.env), ...opts.env };
  if (opts.home !== undefined) env.KINDLING_HOME = typeof opts.home === "string" ? opts.home : opts.home.root;
  return new Promise((resolve, reject) => {
    const child = spawn(opts.bin ?? KINDLING, args, { env, cwd: opts.cwd, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const stderr = Buffer.concat(err).toString();
      if (timedOut) {
        reject(
          new Error(
            `kindling ${args.join(" ")} did not exit within ${timeoutMs} ms (killed); stderr: ${stderr.slice(-2000)}`,
          ),
        );
        return;
      }
      resolve({
        code: code ?? 128 + (signal ? constants.signals[signal] : 0),
        stdout: Buffer.concat(out).toString(),
        stderr,
      });
    });
    child.stdin.on("error", () => {});
    child.stdin.end(opts.input);
  });
}

export interface LiveCli {
  child: ChildProcess;
  /** stdout and stderr so far. */
  out: () => string;
  err: () => string;
  /** The exit status (null when a signal ended it); bounded like every wait here. */
  exit: (ms?: number) => Promise<number | null>;
}

/**
 * Spawns `kindling ARGS` (stdin closed) and resolves once its stdout holds `marker` (default "ready");
 * fails at once if it exits first, or after `timeoutMs` (the child is then killed), naming the command.
 */
export async function spawnCliUntil(
  args: string[],
  opts: Pick<CliOptions, "home" | "env"> & { marker?: string; timeoutMs?: number } = {},
): Promise<LiveCli> {
  const marker = opts.marker ?? "ready";
  const env: Record<string, string | undefined> = { ...process.env, ...opts.env };
  if (opts.home !== undefined) env.KINDLING_HOME = typeof opts.home === "string" ? opts.home : opts.home.root;
  const child = spawn(KINDLING, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stderr.on("data", (d) => {
    err += d;
  });
  // Its status at "exit"; then up to 2 s for the rest of its output ("close" never comes while an
  // orphaned container still holds the CLI's stdout).
  const closed = new Promise<number | null>((resolve) =>
    child.once("exit", (code) => {
      const done = () => resolve(code);
      child.once("close", done);
      setTimeout(done, 2000).unref();
    }),
  );
  const what = `kindling ${args.join(" ")} to print ${JSON.stringify(marker)}`;
  const seen = new Promise<void>((resolve, reject) => {
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes(marker)) resolve();
    });
    closed.then((code) =>
      reject(new Error(`${what}: it exited (status ${code}) first; stderr: ${err.slice(-2000)}`)),
    );
  });
  await within(seen, opts.timeoutMs ?? 120_000, what).catch((e) => {
    child.kill("SIGKILL");
    throw e;
  });
  return {
    child,
    out: () => out,
    err: () => err,
    exit: (ms = 120_000) => within(closed, ms, `kindling ${args.join(" ")} to exit`),
  };
}
