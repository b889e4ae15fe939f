import { type SpawnOptions, spawn } from "node:child_process";
import { KindlingError } from "./errors.js";

export interface ExecResult {
  stdout: string;
  stderr: string;
  code: number;
}

export interface ExecOptions extends SpawnOptions {
  /** Resolve instead of throwing on a non-zero exit. */
  allowFailure?: boolean;
  /** Bytes written to the child's stdin. */
  input?: string | Buffer;
}

/** Runs a program to completion, capturing its output; a failure names the command and its stderr. */
export function exec(cmd: string, args: string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const { allowFailure, input, ...spawnOpts } = opts;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...spawnOpts, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on("data", (d: Buffer) => out.push(d));
    child.stderr!.on("data", (d: Buffer) => err.push(d));
    child.on("error", (e: NodeJS.ErrnoException) =>
      reject(e.code === "ENOENT" ? new KindlingError(`${cmd} is not installed (run scripts/setup.sh)`) : e),
    );
    child.on("close", (code, signal) => {
      const result = {
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        code: code ?? 128,
      };
      if (result.code !== 0 && !allowFailure) {
        const why = signal ? `signal ${signal}` : `status ${code}`;
        reject(
          new KindlingError(`${cmd} ${args.join(" ")} failed (${why}): ${result.stderr.trim().slice(-2000)}`),
        );
      } else resolve(result);
    });
    child.stdin!.on("error", () => {});
    child.stdin!.end(input);
  });
}
