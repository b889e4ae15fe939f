import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { isSameProcess } from "../host/process.js";
import type { KindlingHome } from "../util/home.js";
import type { DaemonConfig, DaemonState } from "./types.js";

const ID = /^[0-9a-f]{16}$/;
/** mnt/.new-<pid>-<id>: a daemon directory being filled, before its rename to mnt/<id>. */
const NEW = /^\.new-(\d+)-[0-9a-f]{16}$/;

async function readJson<T>(file: string): Promise<T | null> {
  try {
    return JSON.parse(await readFile(file, "utf8")) as T;
  } catch {
    return null;
  }
}

/**
 * A lazy daemon's directory mnt/<id>: the one owner of every path in it.
 *   config.json   what the opener asked for (DaemonConfig)
 *   state.json    written by the daemon once it serves (DaemonState)
 *   daemon.log    its stdout and stderr
 *   fs/           the FUSE mountpoint holding the lazy file
 *   lower[-N]/    generation N of the image's SquashFS mount (lower.ts)
 *   users/        a shared daemon's user tokens; `stopping`: its exit mark (shared.ts)
 * A directory appears complete: it is filled under mnt/.new-<pid>-<id> and renamed into place, so
 * a concurrent cleanup never sees one without its config.
 */
export class DaemonDir {
  readonly path: string;
  constructor(
    readonly home: KindlingHome,
    readonly id: string,
  ) {
    this.path = path.join(home.mounts, id);
  }

  static isId(name: string): boolean {
    return ID.test(name);
  }

  /** The directory of a daemon given its path (mnt/<id>). */
  static at(home: KindlingHome, dir: string): DaemonDir {
    return new DaemonDir(home, path.basename(dir));
  }

  /** Every daemon directory of this home. */
  static async all(home: KindlingHome): Promise<DaemonDir[]> {
    const names = await readdir(home.mounts).catch(() => [] as string[]);
    return names.filter((n) => ID.test(n)).map((n) => new DaemonDir(home, n));
  }

  /**
   * An id for a daemon directory that is not made yet, and its directory being filled
   * (mnt/.new-<pid>-<id>, made now): a daemon started before its image is known logs there.
   */
  static async reserve(home: KindlingHome): Promise<{ id: string; path: string }> {
    const id = randomBytes(8).toString("hex");
    const tmp = DaemonDir.newPath(home, id);
    await mkdir(tmp, { recursive: true });
    return { id, path: tmp };
  }

  /** mnt/.new-<pid>-<id>: where this process fills directory `id` before renaming it into place. */
  static newPath(home: KindlingHome, id: string): string {
    return path.join(home.mounts, `.new-${process.pid}-${id}`);
  }

  /**
   * A new daemon directory, complete with its config (made by `config(dir)`) and mountpoint
   * before it appears under its name. `reserved`: an id from reserve() (its directory is filled).
   */
  static async create(
    home: KindlingHome,
    config: (dir: DaemonDir) => DaemonConfig,
    reserved?: string,
  ): Promise<DaemonDir> {
    const dir = new DaemonDir(home, reserved ?? randomBytes(8).toString("hex"));
    const tmp = DaemonDir.newPath(home, dir.id);
    try {
      await mkdir(path.join(tmp, "fs"), { recursive: true });
      await mkdir(path.join(tmp, "users"));
      // 0600: it may hold registry credentials (KINDLING_REGISTRY_PASSWORD).
      await writeFile(path.join(tmp, "config.json"), JSON.stringify(config(dir)), {
        flag: "wx",
        mode: 0o600,
      });
      await rename(tmp, dir.path);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw err;
    }
    return dir;
  }

  /** Directories a creator that died left before renaming them into place. */
  static async removeAbandoned(home: KindlingHome): Promise<string[]> {
    const removed: string[] = [];
    for (const name of await readdir(home.mounts).catch(() => [] as string[])) {
      const m = NEW.exec(name);
      if (!m || isSameProcess(Number(m[1]))) continue;
      await rm(path.join(home.mounts, name), { recursive: true, force: true });
      removed.push(path.join(home.mounts, name));
    }
    return removed;
  }

  get configFile(): string {
    return path.join(this.path, "config.json");
  }
  get stateFile(): string {
    return path.join(this.path, "state.json");
  }
  get logFile(): string {
    return path.join(this.path, "daemon.log");
  }
  get mountpoint(): string {
    return path.join(this.path, "fs");
  }
  get usersDir(): string {
    return path.join(this.path, "users");
  }
  get stoppingMark(): string {
    return path.join(this.path, "stopping");
  }
  /** Where generation `gen` of the image's SquashFS is mounted. */
  lower(gen: number): string {
    return path.join(this.path, gen === 0 ? "lower" : `lower-${gen}`);
  }
  /** The lower mount directories present, oldest first. */
  async lowers(): Promise<string[]> {
    const names = await readdir(this.path).catch(() => [] as string[]);
    const gen = (n: string) => (n === "lower" ? 0 : Number(n.slice(6)));
    return names
      .filter((n) => n === "lower" || /^lower-\d+$/.test(n))
      .sort((a, b) => gen(a) - gen(b))
      .map((n) => path.join(this.path, n));
  }

  readConfig(): Promise<DaemonConfig | null> {
    return readJson<DaemonConfig>(this.configFile);
  }
  readState(): Promise<DaemonState | null> {
    return readJson<DaemonState>(this.stateFile);
  }
}
