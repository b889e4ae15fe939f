/**
 * A host process on a pseudo-terminal (`-t` under runc/runsc): `runc run` / `runc exec -t` with
 * `process.terminal` make the container's pty themselves and relay it to their own stdio when that is
 * a terminal (runc's foreground mode; `--console-socket` would need SCM_RIGHTS, which Node cannot
 * receive). So the runtime runs on a host pty from node-pty: our resize of it reaches runc as SIGWINCH,
 * and runc copies the size to the container's pty. Loaded only for `-t` (a native addon).
 */
import { constants } from "node:os";
import { PassThrough, type Readable } from "node:stream";
import { hostEnv } from "../config/index.js";
import { KindlingError } from "../util/errors.js";
import { exitStatusOf } from "./status.js";
import type { ExitStatus, TtySize } from "./types.js";

/** A process whose stdin, stdout and stderr are one pty; `output` carries what it writes. */
export interface PtyProcess {
  readonly pid: number;
  /** Everything the terminal shows (stdout and stderr merged, as on a terminal). Ends at exit. */
  readonly output: Readable;
  /** Resolves once the process exited and its output was read. */
  readonly exited: Promise<ExitStatus>;
  write(data: Buffer): void;
  resize(size: TtySize): void;
}

/** The size a pty gets when the client has none (not a terminal), as docker's default. */
export const DEFAULT_TTY_SIZE: TtySize = { rows: 24, cols: 80 };

/** Bounds the kernel takes (struct winsize: unsigned short); anything else is the default. */
export function checkTtySize(size: Partial<TtySize> | undefined): TtySize {
  const ok = (n: unknown) => typeof n === "number" && Number.isInteger(n) && n > 0 && n <= 0xffff;
  return size && ok(size.rows) && ok(size.cols) ? { rows: size.rows!, cols: size.cols! } : DEFAULT_TTY_SIZE;
}

export async function spawnOnPty(
  file: string,
  args: string[],
  opts: { cwd?: string; size: TtySize; env?: Record<string, string | undefined> },
): Promise<PtyProcess> {
  const { spawn } = await import("@lydell/node-pty");
  let term: ReturnType<typeof spawn>;
  try {
    term = spawn(file, args, {
      name: "xterm",
      cols: opts.size.cols,
      rows: opts.size.rows,
      cwd: opts.cwd ?? process.cwd(),
      env: (opts.env ?? hostEnv()) as Record<string, string>,
      encoding: null, // bytes as they are
    });
  } catch (err) {
    throw new KindlingError(`cannot start ${file} on a terminal: ${(err as Error).message}`);
  }
  const output = new PassThrough();
  term.onData((d) => output.write(d as unknown as Buffer));
  // node-pty reports the exit after the pty's last output was read (its socket closed)
  const exited = new Promise<ExitStatus>((resolve) => {
    term.onExit(({ exitCode, signal }) => {
      output.end();
      const name = signal ? signalName(signal) : null;
      resolve(exitStatusOf(name ? null : exitCode, name));
    });
  });
  return {
    pid: term.pid,
    output,
    exited,
    write: (data) => term.write(data as unknown as string),
    resize: (size) => {
      try {
        term.resize(size.cols, size.rows);
      } catch {
        // the process is gone (its pty closed): nothing to resize
      }
    },
  };
}

function signalName(n: number): NodeJS.Signals | null {
  return (Object.entries(constants.signals).find(([, v]) => v === n)?.[0] as NodeJS.Signals) ?? null;
}
