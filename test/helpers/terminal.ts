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
