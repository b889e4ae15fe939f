import { lstat, readlink } from "node:fs/promises";
import path from "node:path";
import { KindlingError } from "../util/errors.js";

/**
 * Resolves `p` inside the directory tree `root` as the container would see it: symlinks (absolute
 * or relative) are followed but can never lead outside `root`. Used before reading image files on
 * the host (e.g. /etc/passwd), so a hostile image cannot make Kindling read the host's files.
 * Missing components are allowed; the result is then the path they would have.
 */
export async function resolveInRoot(root: string, p: string): Promise<string> {
  const pending = p.split("/").filter((c) => c !== "" && c !== ".");
  const done: string[] = [];
  let links = 0;
  while (pending.length > 0) {
    const c = pending.shift()!;
    if (c === "..") {
      done.pop();
      continue;
    }
    const host = path.join(root, ...done, c);
    let target: string | undefined;
    try {
      if ((await lstat(host)).isSymbolicLink()) target = await readlink(host);
    } catch {
      // missing: keep the name, nothing to follow
    }
    if (target === undefined) {
      done.push(c);
      continue;
    }
    if (++links > 40) throw new KindlingError(`too many symlinks resolving ${p} in the image`);
    if (target.startsWith("/")) done.length = 0;
    pending.unshift(...target.split("/").filter((x) => x !== "" && x !== "."));
  }
  return path.join(root, ...done);
}
