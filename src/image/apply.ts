import { constants } from "node:fs";
import {
  chmod,
  chown,
  type FileHandle,
  lchown,
  link,
  lstat,
  lutimes,
  mkdir,
  open,
  readdir,
  rm,
  symlink,
  utimes,
  writeFile,
} from "node:fs/promises";
import path from "node:path";
import type { Readable } from "node:stream";
import { KindlingError } from "../util/errors.js";
import { exec } from "../util/exec.js";
import { cleanEntryPath, resolveInRoot } from "./securejoin.js";
import { type TarEntry, tarReader } from "./tar.js";

const WHITEOUT = ".wh.";
/** Files up to this size are buffered and written in the background. */
const SMALL_FILE = 1 << 20;
const MAX_INFLIGHT = 32;

/** Creates a regular file (never through a link), fills it, then sets owner, mode and mtime. */
async function writeFileEntry(
  abs: string,
  e: TarEntry,
  fill: (fh: FileHandle) => Promise<void>,
): Promise<void> {
  // O_EXCL|O_NOFOLLOW: whatever was at this path was removed first; never write through a link.
  const fh = await open(
    abs,
    constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
    0o600,
  );
  try {
    await fill(fh);
    await fh.chown(e.uid, e.gid);
    await fh.chmod(e.mode); // after chown, which clears setuid/setgid
    await fh.utimes(e.mtime, e.mtime);
  } finally {
    await fh.close();
  }
}
const OPAQUE = ".wh..wh..opq";

/** Escapes a path for `setfattr --restore` (getfattr's dump format: octal escapes). */
function dumpQuote(p: string): string {
  let s = "";
  for (const byte of Buffer.from(p)) {
    s +=
      byte <= 0x20 || byte >= 0x7f || byte === 0x5c || byte === 0x3d
        ? `\\${byte.toString(8).padStart(3, "0")}`
        : String.fromCharCode(byte);
  }
  return s;
}

/** The tree cannot be built where it is (tmpfs); the caller may retry on disk. */
export class RetryOnDiskError extends KindlingError {}

/** The tree would exceed the space given to it. */
export class TreeTooLargeError extends RetryOnDiskError {
  constructor(entry: string, limit: number) {
    super(
      `tar entry ${JSON.stringify(entry)}: the image's files exceed ${limit} bytes (the space available for them)`,
    );
  }
}

/**
 * mksquashfs stores a file's xattrs in the order the filesystem lists them. ext4 lists them in the
 * order they were set (we set them sorted); tmpfs lists them in its own hash order. So a file with
 * two or more xattrs is only deterministic on an insertion-ordered filesystem.
 */
export class XattrOrderError extends RetryOnDiskError {
  constructor(entry: string) {
    super(
      `tar entry ${JSON.stringify(entry)}: several xattrs on one file need an insertion-ordered filesystem`,
    );
  }
}

/**
 * Applies image layers, in order, to a directory tree: the union filesystem a container would see,
 * materialized. One instance per image; call finish() after the last layer.
 */
export class LayerApplier {
  /** mtimes of directories by relative path; applied last, since writing into a dir changes it. */
  private readonly dirMtimes = new Map<string, number>();
  private pendingXattrs: { abs: string; xattrs: Map<string, Buffer> }[] = [];
  private layerNo = 0;
  /** Relative paths known to be real directories: spares an lstat per path component. */
  private readonly knownDirs = new Set<string>();
  /**
   * Small files being written in the background (path -> write). Creating thousands of files one
   * syscall at a time is latency-bound; new files at fresh paths do not depend on each other, so
   * they are written concurrently, and anything that could observe them waits for them (settle).
   */
  private readonly inflight = new Map<string, Promise<void>>();
  private inflightError: Error | null = null;

  /** File bytes written so far (all layers), checked against `maxBytes`. */
  private written = 0;

  /** `maxBytes`: refuse to write more file data than this (a layer that expands absurdly, a full disk). */
  constructor(
    readonly root: string,
    private readonly maxBytes = Number.POSITIVE_INFINITY,
    /** The tree is on a filesystem whose xattr order we cannot control (tmpfs). */
    private readonly unorderedXattrs = false,
  ) {}

  /** Applies one decompressed layer tar. `label` names the layer in errors. */
  async apply(stream: Readable | AsyncIterable<Buffer>, label = `layer ${this.layerNo + 1}`): Promise<void> {
    this.layerNo++;
    const touched = new Set<string>(); // relative paths written by this layer (and their parents)
    const opaque: string[] = [];
    const tar = tarReader(stream as AsyncIterable<Buffer>);
    try {
      for (;;) {
        let e: TarEntry | null;
        try {
          e = await tar.next();
        } catch (err) {
          throw err instanceof KindlingError ? new KindlingError(`${label}: ${err.message}`) : err;
        }
        if (!e) break;
        try {
          await this.applyEntry(e, tar, touched, opaque);
        } catch (err) {
          if (err instanceof RetryOnDiskError) throw err;
          if (err instanceof KindlingError) throw new KindlingError(`${label}: ${err.message}`);
          throw new KindlingError(`${label}: tar entry ${JSON.stringify(e.name)}: ${(err as Error).message}`);
        }
      }
    } catch (err) {
      // Let background writes settle, so whoever removes the tree does not race them.
      await Promise.allSettled(this.inflight.values());
      throw err;
    }
    await this.barrier();
    await this.flushXattrs();
    // Opaque dirs hide lower layers' content only: entries this layer wrote there stay.
    for (const dir of opaque) await this.clearLower(dir, touched);
  }

  private async applyEntry(
    e: TarEntry,
    tar: ReturnType<typeof tarReader>,
    touched: Set<string>,
    opaque: string[],
  ): Promise<void> {
    const parts = cleanEntryPath(e.name, e.name);
    const base = parts.at(-1);
    const markTouched = (rel: string[]) => {
      for (let i = 1; i <= rel.length; i++) touched.add(rel.slice(0, i).join("/"));
    };

    if (base?.startsWith(WHITEOUT)) {
      await this.barrier();
      const parent = await resolveInRoot(this.root, parts.slice(0, -1), this.resolveOpts(e.name, true));
      if (base === OPAQUE) opaque.push(parent.join("/"));
      else if (!base.startsWith(`${WHITEOUT}${WHITEOUT}`)) {
        const victim = [...parent, base.slice(WHITEOUT.length)];
        const key = victim.join("/");
        if (!touched.has(key)) await this.remove(victim);
        // Whiteouts hide lower layers only: if this layer already wrote the path, keep what it
        // wrote and drop only the lower content below it (as an opaque dir would).
        else if ((await lstat(path.join(this.root, key)).catch(() => null))?.isDirectory()) opaque.push(key);
      }
      return;
    }

    if (parts.length === 0) {
      // The root itself ("./"): only its metadata.
      if (e.type !== "dir")
        throw new KindlingError(`tar entry ${JSON.stringify(e.name)}: the root must be a directory`);
      await this.setMeta(this.root, e, false);
      this.dirMtimes.set("", e.mtime);
      return;
    }

    const parent = await resolveInRoot(this.root, parts.slice(0, -1), this.resolveOpts(e.name, true));
    const rel = [...parent, base!];
    const abs = path.join(this.root, ...rel);
    markTouched(rel);

    await this.settle(rel.join("/"));
    let existing: Awaited<ReturnType<typeof lstat>> | null = null;
    try {
      existing = await lstat(abs);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }

    if (e.type === "dir" && existing?.isDirectory()) {
      this.knownDirs.add(rel.join("/"));
      await this.setMeta(abs, e, false);
      this.dirMtimes.set(rel.join("/"), e.mtime);
      this.queueXattrs(abs, e);
      return;
    }

    let linkTarget: string | undefined;
    if (e.type === "hardlink") {
      await this.barrier();
      const tparts = cleanEntryPath(e.linkname, e.name, "hard link target");
      const t = await resolveInRoot(this.root, tparts, { ...this.resolveOpts(e.name, false), create: false });
      linkTarget = path.join(this.root, ...t);
      if (linkTarget === abs) return; // a link to itself: nothing to do
      let st: Awaited<ReturnType<typeof lstat>>;
      try {
        st = await lstat(linkTarget);
      } catch {
        throw new KindlingError(
          `tar entry ${JSON.stringify(e.name)}: hard link target ${JSON.stringify(e.linkname)} does not exist in the image`,
        );
      }
      if (st.isDirectory()) {
        throw new KindlingError(`tar entry ${JSON.stringify(e.name)}: hard link to a directory`);
      }
    }

    if (existing) await this.remove(rel);

    switch (e.type) {
      case "dir":
        await mkdir(abs);
        this.knownDirs.add(rel.join("/"));
        await this.setMeta(abs, e, false);
        this.dirMtimes.set(rel.join("/"), e.mtime);
        break;
      case "file": {
        this.written += e.size;
        if (this.written > this.maxBytes) throw new TreeTooLargeError(e.name, this.maxBytes);
        if (e.size <= SMALL_FILE) {
          const data = await tar.readAll();
          this.startWrite(rel.join("/"), abs, e, async (fh) => {
            let off = 0;
            while (off < data.length) off += (await fh.write(data, off, data.length - off)).bytesWritten;
          });
          if (this.inflight.size >= MAX_INFLIGHT) await this.barrier();
        } else {
          await writeFileEntry(abs, e, (fh) =>
            tar.readData(async (b) => {
              let off = 0;
              while (off < b.length) off += (await fh.write(b, off, b.length - off)).bytesWritten;
            }),
          );
        }
        break;
      }
      case "symlink":
        await symlink(e.linkname, abs);
        await this.setMeta(abs, e, true);
        break;
      case "hardlink":
        await link(linkTarget!, abs);
        break;
      case "char":
      case "block":
      case "fifo": {
        const kind = e.type === "char" ? "c" : e.type === "block" ? "b" : "p";
        const args = ["-m", (e.mode & 0o7777).toString(8), abs, kind];
        if (kind !== "p") args.push(String(e.devmajor), String(e.devminor));
        await exec("mknod", args);
        await this.setMeta(abs, e, false);
        break;
      }
    }
    this.queueXattrs(abs, e);
  }

  private resolveOpts(entry: string, create: boolean) {
    return {
      followFinal: true,
      create,
      entry,
      knownDirs: this.knownDirs,
      settle: (rel: string) => this.settle(rel),
    };
  }

  private startWrite(rel: string, abs: string, e: TarEntry, write: (fh: FileHandle) => Promise<void>): void {
    const p = writeFileEntry(abs, e, write).catch((err: Error) => {
      this.inflightError ??= new KindlingError(`tar entry ${JSON.stringify(e.name)}: ${err.message}`);
    });
    this.inflight.set(rel, p);
  }

  /** Waits for a background write at `rel`, if any. */
  private async settle(rel: string): Promise<void> {
    if (this.inflight.has(rel)) await this.barrier();
  }

  /** Waits for every background write; rethrows the first failure. */
  private async barrier(): Promise<void> {
    if (this.inflight.size > 0) {
      await Promise.all(this.inflight.values());
      this.inflight.clear();
    }
    if (this.inflightError) throw this.inflightError;
  }

  private async setMeta(abs: string, e: TarEntry, isLink: boolean): Promise<void> {
    if (isLink) {
      await lchown(abs, e.uid, e.gid);
      await lutimes(abs, e.mtime, e.mtime);
      return;
    }
    await chown(abs, e.uid, e.gid);
    await chmod(abs, e.mode);
    await utimes(abs, e.mtime, e.mtime);
  }

  private queueXattrs(abs: string, e: TarEntry): void {
    // overlayfs reads its own xattrs from lower layers (redirects, opaque, metacopy): an image must
    // not carry them into the overlay that runtimes stack on it.
    for (const k of e.xattrs.keys()) if (/^(trusted|user)\.overlay\./.test(k)) e.xattrs.delete(k);
    if (e.xattrs.size === 0) return;
    if (e.xattrs.size > 1 && this.unorderedXattrs) throw new XattrOrderError(e.name);
    // Set in name order, so an insertion-ordered filesystem lists them in name order.
    this.pendingXattrs.push({
      abs,
      xattrs: new Map([...e.xattrs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
    });
  }

  /** Sets the queued xattrs with one setfattr run (Node has no xattr API). */
  private async flushXattrs(): Promise<void> {
    if (this.pendingXattrs.length === 0) return;
    await this.barrier();
    const lines: string[] = [];
    for (const { abs, xattrs } of this.pendingXattrs) {
      lines.push(`# file: ${dumpQuote(abs)}`);
      for (const [k, v] of xattrs) lines.push(`${dumpQuote(k)}=0s${v.toString("base64")}`);
      lines.push("");
    }
    this.pendingXattrs = [];
    const dump = path.join(path.dirname(this.root), `.xattrs-${process.pid}-${this.layerNo}`);
    await writeFile(dump, `${lines.join("\n")}\n`);
    try {
      await exec("setfattr", ["-h", `--restore=${dump}`]);
    } finally {
      await rm(dump, { force: true });
    }
  }

  /** Removes a path (recursively), never following a symlink out. */
  private async remove(rel: string[]): Promise<void> {
    // Pending xattrs and writes may be below this path; finish them before it goes away.
    await this.barrier();
    await this.flushXattrs();
    const key = rel.join("/");
    for (const k of this.knownDirs) if (k === key || k.startsWith(`${key}/`)) this.knownDirs.delete(k);
    await rm(path.join(this.root, ...rel), { recursive: true, force: true });
    for (const k of this.dirMtimes.keys()) if (k === key || k.startsWith(`${key}/`)) this.dirMtimes.delete(k);
  }

  /** Deletes from `dir` everything this layer did not write. */
  private async clearLower(dir: string, touched: Set<string>): Promise<void> {
    const abs = path.join(this.root, dir);
    let names: string[];
    try {
      names = await readdir(abs);
    } catch {
      return;
    }
    for (const name of names) {
      const rel = dir ? `${dir}/${name}` : name;
      if (!touched.has(rel)) await this.remove(rel.split("/"));
      else if ((await lstat(path.join(abs, name))).isDirectory()) await this.clearLower(rel, touched);
    }
  }

  /** Sets every directory's mtime, deepest first, so the tree does not depend on when it was built. */
  async finish(): Promise<void> {
    await this.barrier();
    await this.flushXattrs();
    const walk = async (rel: string): Promise<void> => {
      const abs = rel ? path.join(this.root, rel) : this.root;
      for (const d of await readdir(abs, { withFileTypes: true })) {
        if (d.isDirectory()) await walk(rel ? `${rel}/${d.name}` : d.name);
      }
      const t = this.dirMtimes.get(rel) ?? 0;
      await utimes(abs, t, t);
    };
    await walk("");
  }
}
