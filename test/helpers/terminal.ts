/**
 * A command on a real terminal for tests of `-t`: util-linux's `script` gives it a pty (its stdin,
 * stdout and stderr), we type into script's stdin and read what the terminal shows. The size is set
 * with `stty` inside before the command starts, and changed from outside with `stty -F` on the
 * command's pty, which makes the kernel send SIGWINCH to it as a terminal emulator's resize does.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readdir, readFile, readlink } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { exec } from "../../src/util/exec.js";

const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

export class ScriptTerminal {
  private text = "";
  private readonly closed: Promise<number>;

  private constructor(readonly child: ChildProcess) {
    child.stdout!.on("data", (d: Buffer) => {
      this.text += d.toString("latin1");
    });
    child.stderr!.on("data", (d: Buffer) => {
      this.text += d.toString("latin1");
    });
    this.closed = new Promise((resolve) =>
      child.on("close", (code, signal) => resolve(code ?? 128 + (signal ? 9 : 0))),
    );
  }

  /**
   * `argv` on a terminal of rows x cols; `env` adds to ours. With `afterwards`, a shell line run on the same
   * terminal after it (e.g. `stty -a`, to see what it left); the status is still the command's.
   */
  static start(
    argv: string[],
    opts: { rows: number; cols: number; env?: Record<string, string>; afterwards?: string },
  ) {
    const cmd = argv.map(quote).join(" ");
    const inner = opts.afterwards
      ? `stty rows ${opts.rows} cols ${opts.cols} && ${cmd}; s=$?; ${opts.afterwards}; exit $s`
      : `stty rows ${opts.rows} cols ${opts.cols} && exec ${cmd}`;
    const child = spawn("script", ["-qefc", inner, "/dev/null"], {
      env: { ...process.env, ...opts.env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    return new ScriptTerminal(child);
  }

  /** Everything the terminal showed so far. */
  get output(): string {
    return this.text;
  }

  type(s: string): void {
    this.child.stdin!.write(s);
  }

  /** Waits (bounded) until the output after `from` matches `re`; fails naming `what` and the output. */
  async expect(re: RegExp, what: string, from = 0, ms = 60_000): Promise<RegExpExecArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = re.exec(this.text.slice(from));
      if (m) return m;
      if (Date.now() > deadline)
        throw new Error(`timed out after ${ms} ms waiting for ${what}; the terminal shows:\n${this.text}`);
      await sleep(50);
    }
  }

  /** The pid of the command script runs (its child's, when a shell runs it with `afterwards`). */
  async commandPid(): Promise<number> {
    const child = async (pid: number) => {
      for (const tid of await readdir(`/proc/${pid}/task`)) {
        const kids = (await readFile(`/proc/${pid}/task/${tid}/children`, "utf8")).trim();
        if (kids) return Number(kids.split(" ")[0]);
      }
      return undefined;
    };
    const first = await child(this.child.pid!);
    if (first === undefined) throw new Error("script has no child");
    return first;
  }

  /** Resizes the command's terminal, as a terminal emulator does (the kernel sends SIGWINCH). */
  async resize(rows: number, cols: number): Promise<void> {
    const pts = await readlink(`/proc/${await this.commandPid()}/fd/0`);
    await exec("stty", ["-F", pts, "rows", String(rows), "cols", String(cols)]);
  }

  /** The exit status (script -e: the command's), waiting at most `ms`; then it is killed. */
  async exited(ms: number, what: string): Promise<number> {
    const t = sleep(ms).then(() => "timeout" as const);
    const r = await Promise.race([this.closed, t]);
    if (r === "timeout") {
      this.kill();
      throw new Error(`${what}: still running after ${ms} ms; the terminal shows:\n${this.text}`);
    }
    return r;
  }

  kill(): void {
    if (this.child.exitCode === null) this.child.kill("SIGKILL");
  }
}

/** Typed after the command on the terminal: shows whether raw mode was undone (canonical input, echo). */
export const SHOW_TERMINAL_MODE =
  "echo; stty -a | tr ' ' '\\n' | grep -E '^-?(icanon|echo)$' | tr '\\n' ' '; echo END";

/** After a command started with `afterwards: SHOW_TERMINAL_MODE`: the terminal is back in cooked mode. */
export const terminalRestored = (t: ScriptTerminal) =>
  t.expect(/icanon echo END/, "the terminal restored (icanon echo)");

/** Polls `stty size` in the shell on `t` until it shows `rows cols`, at most `ms`. */
export async function untilSize(t: ScriptTerminal, rows: number, cols: number, ms = 60_000): Promise<void> {
  // a resize travels client -> service -> supervisor -> runtime (or guest agent) -> process
  const deadline = Date.now() + ms;
  for (;;) {
    const at = t.output.length;
    t.type("stty size\r");
    const seen = await t.expect(/\d+ \d+\r*\n/, "stty size after the resize", at, Math.min(ms, 20_000));
    if (seen[0].startsWith(`${rows} ${cols}`)) return;
    if (Date.now() > deadline) throw new Error(`no resize to ${rows}x${cols} seen:\n${t.output}`);
  }
}

export interface ShellSession {
  /** The shell's prompt, and how long it may take to show (a VM boots first). */
  prompt: RegExp;
  promptMs?: number;
  /** What `tty` prints there. */
  ttyName: RegExp;
  /** The terminal's size at the start, and the one it is resized to. */
  size: [number, number];
  resizeTo: [number, number];
  /** The status the shell exits with, and how long the exit may take. */
  exitCode: number;
  exitMs?: number;
  what: string;
}

/**
 * `argv` (a kindling command giving a shell) on a terminal of `s.size`, one interactive session: the
 * prompt, `tty` and `stty size` as given, a resize seen inside, `exit N` as the client's status, the
 * terminal restored afterwards. The terminal is killed on every way out.
 */
export async function shellSession(
  argv: string[],
  env: Record<string, string>,
  s: ShellSession,
): Promise<void> {
  const [rows, cols] = s.size;
  const t = ScriptTerminal.start(argv, { rows, cols, env, afterwards: SHOW_TERMINAL_MODE });
  try {
    await driveShell(t, s);
  } finally {
    t.kill();
  }
}

async function driveShell(t: ScriptTerminal, s: ShellSession): Promise<void> {
  await t.expect(s.prompt, "the shell's prompt", 0, s.promptMs ?? 60_000);
  const mark = t.output.length;
  t.type("tty; stty size\r");
  const [rows, cols] = s.size;
  await t.expect(new RegExp(`(${s.ttyName.source})\\r*\\n${rows} ${cols}`), "tty and stty size", mark);
  await t.resize(...s.resizeTo);
  await untilSize(t, ...s.resizeTo);
  t.type(`exit ${s.exitCode}\r`);
  const status = await t.exited(s.exitMs ?? 60_000, s.what);
  if (status !== s.exitCode) throw new Error(`${s.what}: exit status ${status}, expected ${s.exitCode}`);
  await terminalRestored(t);
}
