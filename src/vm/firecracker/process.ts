/**
 * Finding and supervising the firecracker (or jailer) process: one child, its output in files in the
 * VM's state directory, its exit reported with the end of its stderr, and never left behind.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { constants } from "node:fs";
import { access, open, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { config, searchPath } from "../../config/index.js";
import { KindlingError } from "../../util/errors.js";
import { exec } from "../../util/exec.js";

export const FIRECRACKER_MISSING =
  "firecracker is not installed or not on PATH (set KINDLING_FIRECRACKER); run `kindling doctor`";

/** An executable file by absolute path, or the first `name` on $PATH; undefined when there is none. */
export async function findExecutable(name: string): Promise<string | undefined> {
  const candidates = name.includes("/") ? [path.resolve(name)] : searchPath().map((d) => path.join(d, name));
  for (const c of candidates) {
    try {
      await access(c, constants.X_OK);
      if ((await stat(c)).isFile()) return c;
    } catch {
      // not this one
    }
  }
  return undefined;
}

/** $KINDLING_FIRECRACKER (a path or a name), else `firecracker` on $PATH. */
export async function resolveFirecracker(explicit?: string): Promise<string> {
  const want = explicit ?? config().firecracker;
  const found = await findExecutable(want);
  if (!found) throw new KindlingError(FIRECRACKER_MISSING, "ENOFIRECRACKER");
  return found;
}

/** $KINDLING_JAILER, else `jailer` on $PATH (it ships in the same release tarball as firecracker). */
export async function resolveJailer(explicit?: string): Promise<string> {
  const want = explicit ?? config().jailer;
  const found = await findExecutable(want);
  if (!found) {
    throw new KindlingError(
      "jailer is not installed or not on PATH (set KINDLING_JAILER); run `kindling doctor`",
      "ENOJAILER",
    );
  }
  return found;
}

/** "Firecracker v1.16.1" -> "1.16.1"; throws if the binary does not answer --version. */
export async function firecrackerVersion(bin: string): Promise<string> {
  const res = await exec(bin, ["--version"], { timeout: 5000 });
  const m = /v?(\d+\.\d+\.\d+\S*)/.exec(res.stdout + res.stderr);
  if (!m) throw new KindlingError(`${bin} --version printed no version: ${res.stdout.trim()}`);
  return m[1];
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The last lines of the process's stderr (Firecracker prints its panics and fatal errors there). */
  stderrTail: string;
}

export function describeExit(name: string, e: ExitInfo): string {
  const how = e.signal ? `was killed by ${e.signal}` : `exited with status ${e.code}`;
  return `${name} ${how}${e.stderrTail ? `: ${e.stderrTail}` : ""}`;
}

export interface SuperviseOptions {
  cwd?: string;
  /** stdout (the guest's serial console, and Firecracker's log when no logger is set) goes here. */
  stdoutPath: string;
  stderrPath: string;
  env?: NodeJS.ProcessEnv;
}

/**
 * util-linux's setpriv, when present, execs the VMM with a parent-death signal: the kernel kills it if
 * Node dies in any way, SIGKILL included, which no exit handler can cover. (The jailer's privilege drop
 * clears that signal again; the exit hook below still covers a normal exit.)
 */
let setprivPath: Promise<string | undefined> | undefined;
const setpriv = () => {
  setprivPath ??= findExecutable("setpriv");
  return setprivPath;
};

/** Processes still running when Node exits are killed synchronously, so none outlives us. */
const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

export class Supervised {
  readonly exited: Promise<ExitInfo>;
  private exitInfo: ExitInfo | undefined;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
    private readonly stderrPath: string,
  ) {
    live.add(child);
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        live.delete(child);
        void tail(stderrPath).then((stderrTail) => {
          this.exitInfo = { code, signal, stderrTail };
          resolve(this.exitInfo);
        });
      });
    });
  }

  static async spawn(bin: string, args: string[], opts: SuperviseOptions): Promise<Supervised> {
    const sp = await setpriv();
    const [cmd, argv] = sp ? [sp, ["--pdeathsig", "KILL", "--", bin, ...args]] : [bin, args];
    const out = await open(opts.stdoutPath, "a");
    const err = await open(opts.stderrPath, "a");
    try {
      const child = spawn(cmd, argv, {
        cwd: opts.cwd,
        env: opts.env, // undefined: ours
        // Our file descriptors: output survives us, and no pipe can fill up and stall the VMM.
        stdio: ["ignore", out.fd, err.fd],
      });
      await new Promise<void>((resolve, reject) => {
        child.once("spawn", resolve);
        child.once("error", (e: NodeJS.ErrnoException) =>
          reject(e.code === "ENOENT" ? new KindlingError(`${bin} could not be started: ${e.message}`) : e),
        );
      });
      return new Supervised(path.basename(bin), child, opts.stderrPath);
    } finally {
      await out.close();
      await err.close();
    }
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.exitInfo === undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  signal(sig: NodeJS.Signals): void {
    if (this.running) this.child.kill(sig);
  }

  /** SIGKILL and wait until it is gone. */
  async kill(): Promise<ExitInfo> {
    this.signal("SIGKILL");
    return this.exited;
  }

  /** Resolves with the exit, or undefined if the process is still running after `ms`. */
  async waitFor(ms: number): Promise<ExitInfo | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((r) => {
      timer = setTimeout(() => r(undefined), ms);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  stderr(): Promise<string> {
    return tail(this.stderrPath);
  }
}

/** The last few lines of a file, for error messages. */
export async function tail(file: string, lines = 15, maxBytes = 4000): Promise<string> {
  try {
    const text = (await readFile(file, "utf8")).slice(-maxBytes);
    return text.trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}
