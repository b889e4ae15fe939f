/** Bounded waits for tests: every wait fails with a message naming what did not happen, never hangs. */
import type { ChildProcess } from "node:child_process";

/** `p`, or a rejection after `ms` naming `what`. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** The first line a child prints on stdout; fails at once if it exits first (with its status), or after `ms`. */
export function firstLine(child: ChildProcess, ms: number, what: string): Promise<string> {
  const line = new Promise<string>((resolve, reject) => {
    let buf = "";
    child.stdout!.on("data", (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf("\n");
      if (nl >= 0) resolve(buf.slice(0, nl));
    });
    child.once("exit", (code, signal) =>
      reject(new Error(`${what}: the child exited (${signal ?? `status ${code}`}) before printing a line`)),
    );
  });
  return within(line, ms, what);
}

/** Resolves when the child has exited (at once if it already has), else fails after `ms`. */
export function exited(child: ChildProcess, ms: number, what: string): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return within(new Promise<void>((r) => child.once("exit", () => r())), ms, what);
}

/** Polls `check` every `everyMs` until it is true; fails after `ms` naming `what`. */
export async function until(
  what: string,
  check: () => Promise<boolean>,
  ms = 30_000,
  everyMs = 50,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
