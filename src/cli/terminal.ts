/**
 * The client's terminal for `run -t` / `exec -t`: its size (sent at start and on SIGWINCH, as RESIZE
 * frames) and, with `-i` on a terminal, raw mode (keys, Ctrl-C included, go to the container's pty as
 * docker does), restored on every way out: the normal end, an error, a signal, process exit.
 */
import type { TtySize } from "../client/index.js";

/** The size a pty gets when we have no terminal to measure (docker's default). */
const DEFAULT_SIZE: TtySize = { rows: 24, cols: 80 };

export interface ClientTerminal {
  /** Raw mode was set (notices then need "\r\n"). */
  readonly raw: boolean;
  size(): TtySize;
  /** Calls `fn` with the new size whenever our terminal is resized (SIGWINCH). */
  onResize(fn: (size: TtySize) => void): void;
  /** Restores the terminal and stops listening (idempotent). */
  restore(): void;
}

export function clientTerminal(opts: { raw: boolean }): ClientTerminal {
  const out = process.stdout;
  const size = (): TtySize =>
    out.isTTY && out.columns > 0 && out.rows > 0 ? { rows: out.rows, cols: out.columns } : DEFAULT_SIZE;
  const raw = opts.raw && process.stdin.isTTY === true;
  const listeners: (() => void)[] = [];
  let restored = false;
  const restore = () => {
    if (restored) return;
    restored = true;
    for (const l of listeners) out.off("resize", l);
    if (raw) {
      try {
        process.stdin.setRawMode(false);
      } catch {
        // stdin already closed: the terminal went with it
      }
    }
    process.off("exit", restore);
  };
  if (raw) {
    process.stdin.setRawMode(true);
    process.on("exit", restore); // any exit, even one nobody planned for
  }
  return {
    raw,
    size,
    onResize: (fn) => {
      if (!out.isTTY) return;
      const l = () => fn(size());
      listeners.push(l);
      out.on("resize", l);
    },
    restore,
  };
}
