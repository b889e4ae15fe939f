import { spawn } from "node:child_process";
import { lstat, readlink, rename, rm, stat, statfs } from "node:fs/promises";
import path from "node:path";
import { tempPathFor } from "../util/atomic.js";
import { KindlingError } from "../util/errors.js";

/**
 * Where `-o PATH` writes, decided as `tar -f PATH` would: "-" is stdout; symlinks are followed;
 * a device, FIFO or other special file is written in place (never replaced: `-o /dev/null` must
 * leave /dev/null a device); only a regular file (or a new one) is written to a temp file beside
 * it and renamed over it, so readers see the old file or the whole new one.
 */
export type OutputTarget =
  | { kind: "stdout"; describe: string }
  | { kind: "in-place"; path: string; describe: string }
  | { kind: "replace"; path: string; describe: string };

const MAX_SYMLINK_HOPS = 40; // Linux's own limit (ELOOP)

/** Resolves `-o SPEC`; a directory, a socket, a symlink loop or a missing parent directory is refused. */
export async function resolveOutput(spec: string, flag = "-o"): Promise<OutputTarget> {
  const describe = `${flag} ${spec}`;
  if (spec === "-") return { kind: "stdout", describe };
  if (spec === "") throw new KindlingError(`${flag}: an output path is required`);
  let p = path.resolve(spec);
  for (let hops = 0; ; hops++) {
    if (hops > MAX_SYMLINK_HOPS) throw new KindlingError(`${describe}: too many levels of symbolic links`);
    const st = await lstat(p).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return null;
      throw new KindlingError(`${describe}: ${err.code ?? err.message}`);
    });
    if (st === null) {
      // A new file (or a dangling symlink's target): its directory must exist, as for tar.
      const dir = path.dirname(p);
      const d = await stat(dir).catch(() => null);
      if (!d?.isDirectory()) throw new KindlingError(`${describe}: directory ${dir} does not exist`);
      return { kind: "replace", path: p, describe };
    }
    if (st.isSymbolicLink()) {
      p = path.resolve(path.dirname(p), await readlink(p));
      continue;
    }
    if (st.isDirectory()) {
      throw new KindlingError(
        `${describe}: is a directory (name a file, e.g. ${path.join(spec, "image.tar")})`,
      );
    }
    if (st.isFile()) return { kind: "replace", path: p, describe };
    if (st.isSocket()) throw new KindlingError(`${describe}: is a socket`);
    return { kind: "in-place", path: p, describe }; // character/block device or FIFO
  }
}

/**
 * Runs `tar ARGS -f <target>`: into a temp file renamed over a regular destination, straight into
 * a device or FIFO, or to our stdout. A write error (a full device) fails with one line naming it,
 * and leaves a replaced file as it was.
 */
export async function tarTo(target: OutputTarget, args: string[]): Promise<void> {
  if (target.kind === "stdout") return runTar("-", args, target);
  if (target.kind === "in-place") return runTar(target.path, args, target);
  const tmp = tempPathFor(target.path);
  try {
    await runTar(tmp, args, target);
    await rename(tmp, target.path);
  } finally {
    await rm(tmp, { force: true });
  }
}

function runTar(archive: string, args: string[], target: OutputTarget): Promise<void> {
  return new Promise((resolve, reject) => {
    const stdout = archive === "-" ? 1 : "ignore";
    const child = spawn("tar", ["-c", "-f", archive, ...args], { stdio: ["ignore", stdout, "pipe"] });
    const errs: Buffer[] = [];
    child.stderr!.on("data", (d: Buffer) => errs.push(d));
    child.on("error", (e: NodeJS.ErrnoException) =>
      reject(e.code === "ENOENT" ? new KindlingError("tar is not installed (run scripts/setup.sh)") : e),
    );
    child.on("close", async (code, signal) => {
      if (code === 0) return resolve();
      let why = tarProblem(Buffer.concat(errs).toString(), signal ?? code);
      // A short write carries no errno: on a file system with no room left, say that.
      if (why.startsWith("Wrote only") && archive !== "-") {
        const fs = await statfs(path.dirname(archive)).catch(() => null);
        why = fs?.bavail === 0 ? "cannot write: No space left on device" : `cannot write: ${why}`;
      }
      reject(new KindlingError(`${target.describe}: ${why}`));
    });
  });
}

/** The line of tar's stderr that says what went wrong ("Cannot write: No space left on device"). */
function tarProblem(stderr: string, status: unknown): string {
  const lines = stderr
    .split("\n")
    .map((l) => l.replace(/^tar: /, "").trim())
    .filter((l) => l && !l.startsWith("Error is not recoverable") && !l.startsWith("Exiting with failure"));
  const write = lines.find((l) => /Cannot (write|open)|Broken pipe|Wrote only/.test(l));
  const line = write ?? lines[0] ?? `tar failed (${String(status)})`;
  // "…/x.tar: Cannot write: No space left on device" -> "cannot write: No space left on device"
  const m = /: (Cannot [a-z]+: .*|Wrote only .*)$/.exec(line);
  const what = m ? m[1]! : line;
  return what.startsWith("Cannot") ? `c${what.slice(1)}` : what;
}
