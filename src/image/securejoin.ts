import { chmod, lstat, mkdir, readlink } from "node:fs/promises";
import path from "node:path";
import { KindlingError } from "../util/errors.js";

/** Symlinks followed while resolving one path before we call it a loop (Linux allows 40). */
const MAX_LINKS = 40;

/**
 * Splits an archive path into components, dropping "", "." and any leading "/" (absolute paths are
 * taken relative to the root, as container runtimes do). ".." is refused: no legitimate layer needs
 * it, and refusing is easier to reason about than clamping.
 */
export function cleanEntryPath(name: string, entry: string, what = "path"): string[] {
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) {
    throw new KindlingError(
      `tar entry ${JSON.stringify(entry)}: ${what} climbs out of the image root ("..")`,
    );
  }
  return parts;
}

export interface ResolveOptions {
  /** Follow a symlink in the last component too (for directories we write into). */
  followFinal: boolean;
  /** Create missing directories on the way (0755 root:root), as container runtimes do. */
  create?: boolean;
  /** Named in errors. */
  entry: string;
  /** Relative paths known to be real directories (saves an lstat per component); kept up to date by the caller. */
  knownDirs?: Set<string>;
  /** Called before looking at a path, so a caller with writes in flight can finish the one at that path. */
  settle?: (rel: string) => Promise<void>;
}

/**
 * Resolves `parts` inside `root` the way securejoin does: symlinks are followed but evaluated as if
 * `root` were "/", so ".." and absolute targets can never leave it. Returns the resolved components
 * relative to root; no component of the result except maybe the last is a symlink.
 */
export async function resolveInRoot(root: string, parts: string[], opts: ResolveOptions): Promise<string[]> {
  const queue = [...parts];
  const out: string[] = [];
  let links = 0;
  while (queue.length > 0) {
    const p = queue.shift()!;
    if (p === "" || p === ".") continue;
    if (p === "..") {
      out.pop(); // clamped: ".." of the root is the root
      continue;
    }
    const last = queue.length === 0;
    if (last && !opts.followFinal) {
      out.push(p);
      break;
    }
    const rel = out.length ? `${out.join("/")}/${p}` : p;
    if (opts.knownDirs?.has(rel)) {
      out.push(p);
      continue;
    }
    await opts.settle?.(rel);
    const abs = path.join(root, rel);
    let st: Awaited<ReturnType<typeof lstat>> | null = null;
    try {
      st = await lstat(abs);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    if (st?.isSymbolicLink()) {
      if (++links > MAX_LINKS) {
        throw new KindlingError(`tar entry ${JSON.stringify(opts.entry)}: too many levels of symbolic links`);
      }
      const target = await readlink(abs);
      if (target.startsWith("/")) out.length = 0;
      queue.unshift(...target.split("/"));
      continue;
    }
    if (st === null && opts.create) {
      await mkdir(abs);
      await chmod(abs, 0o755); // not subject to the umask: the tree must not depend on who built it
      opts.knownDirs?.add(rel);
    } else if (st?.isDirectory()) {
      opts.knownDirs?.add(rel);
    } else if (st !== null && !st.isDirectory() && !last) {
      throw new KindlingError(
        `tar entry ${JSON.stringify(opts.entry)}: /${[...out, p].join("/")} is not a directory`,
      );
    }
    out.push(p);
  }
  return out;
}
