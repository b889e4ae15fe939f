/**
 * Containers on disk: $KINDLING_HOME/containers/<id>/ holds
 *   record.json  what was asked (written once by the service, before the supervisor starts)
 *   state.json   what happened (written by the container's supervisor, atomically, at each change)
 *   log.jsonl    every byte the process wrote (logfile.ts), kept whether a service runs or not
 *   shim.sock    the supervisor's control socket (shim.ts); shim.log its own notices
 *   settings.json  the container's resolved settings (0600), pinned by its supervisor at start
 * A service reads these to list, inspect and adopt containers: nothing about a container lives only
 * in a service's memory, so a service killed with SIGKILL loses nothing.
 */
import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import type { Config } from "../config/index.js";
import { isSameProcess } from "../host/process.js";
import type { NetworkInfo } from "../network/types.js";
import type { RunOptions } from "../runtime/types.js";
import { writeFileAtomic } from "../util/atomic.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import type { ContainerStatus as ApiContainerStatus } from "./api.js";

export const CONTAINERS_DIR = "containers";

/** What the service was asked to run. */
export interface ContainerRecord {
  id: string;
  name: string;
  image: string;
  created: string;
  options: RunOptions;
  /** `run --rm`: the supervisor removes the container when its process has ended. */
  autoRemove: boolean;
  /** An attached run: it starts once a client attaches, and stops when that client goes away. */
  attach?: boolean;
  /** `-t`: the terminal's size when the process starts (an attached client's RESIZE frames come first). */
  ttySize?: { rows: number; cols: number };
  /** Reserved for network settings asked at create time; what it got is in the state (`network`). */
  network: Record<string, unknown> | null;
}

/** As the API has it (api/openapi.yaml's ContainerStatus). */
export type ContainerStatus = ApiContainerStatus;

/** What happened to it, written by its supervisor. */
export interface ContainerState {
  status: ContainerStatus;
  /** The supervisor process (pid + start time identify it across pid reuse). */
  shimPid?: number;
  shimStartTime?: number;
  startedAt?: string;
  finishedAt?: string;
  /** The process's status (128+n for signal n; 125 when kindling failed). */
  exitCode?: number;
  signal?: string;
  /** Why kindling (not the process) ended it, or a failure to start. */
  error?: string;
  /** Who stopped it: "request" (stop/kill through the API), "timeout". */
  stoppedBy?: string;
  prepMs?: number;
  bootMs?: number;
  /** From the process's start to its first byte of output. */
  firstOutputMs?: number;
  /** What the container got on its network (src/network), once it runs. */
  network?: NetworkInfo;
}

export function containersDir(home: KindlingHome): string {
  return path.join(home.root, CONTAINERS_DIR);
}

export function containerDir(home: KindlingHome, id: string): string {
  return path.join(containersDir(home), id);
}

export const recordFile = (dir: string) => path.join(dir, "record.json");
export const stateFile = (dir: string) => path.join(dir, "state.json");
export const logFile = (dir: string) => path.join(dir, "log.jsonl");
export const shimSocket = (dir: string) => path.join(dir, "shim.sock");
export const shimLog = (dir: string) => path.join(dir, "shim.log");
export const settingsFile = (dir: string) => path.join(dir, "settings.json");

/** A fresh container id: 12 hex digits (valid for runc and as a host name). */
export function newContainerId(): string {
  return randomBytes(6).toString("hex");
}

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/;

export function checkName(name: string): void {
  if (!NAME_RE.test(name) || /^[0-9a-f]{12}$/.test(name)) {
    throw new KindlingError(
      `--name ${JSON.stringify(name)}: a name is 1-128 of [a-zA-Z0-9_.-], starts with a letter or digit, and is not 12 hex digits`,
      "EINVAL",
    );
  }
}

/**
 * Creates the container's directory with its record, under a temporary name renamed into place:
 * a reader never sees a container without its record, and a crash leaves only a `.new-` dir.
 */
export async function createContainerDir(
  home: KindlingHome,
  record: ContainerRecord,
  settings?: Config,
): Promise<string> {
  const dir = containerDir(home, record.id);
  const tmp = path.join(containersDir(home), `.new-${record.id}`);
  await mkdir(tmp, { recursive: true });
  // Settings may hold a registry password: readable by root only, as the lazy daemon's config.json.
  if (settings) await writeFile(settingsFile(tmp), JSON.stringify(settings), { mode: 0o600 });
  await writeFileAtomic(recordFile(tmp), `${JSON.stringify(record, null, 2)}\n`);
  await writeFileAtomic(stateFile(tmp), `${JSON.stringify({ status: "created" }, null, 2)}\n`);
  await rename(tmp, dir);
  return dir;
}

export async function writeState(dir: string, state: ContainerState): Promise<void> {
  await writeFileAtomic(stateFile(dir), `${JSON.stringify(state, null, 2)}\n`);
}

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(file, "utf8")) as T;
  } catch {
    return undefined;
  }
}

export interface StoredContainer {
  dir: string;
  record: ContainerRecord;
  state: ContainerState;
}

/**
 * The container's record and state. A state that says the supervisor runs while it does not is
 * reported as exited: the supervisor died (SIGKILL, OOM) and cannot tell the process's status.
 */
export async function readContainer(dir: string): Promise<StoredContainer | undefined> {
  const record = await readJson<ContainerRecord>(recordFile(dir));
  if (!record) return undefined;
  const state = (await readJson<ContainerState>(stateFile(dir))) ?? { status: "created" };
  if (state.status === "starting" || state.status === "running") {
    if (state.shimPid && !isSameProcess(state.shimPid, state.shimStartTime ?? 0)) {
      // Re-read: it may have written its last state and exited meanwhile.
      const again = (await readJson<ContainerState>(stateFile(dir))) ?? state;
      if (again.status === "exited") return { dir, record, state: again };
      return {
        dir,
        record,
        state: { ...again, status: "exited", exitCode: 125, error: "the container's supervisor died" },
      };
    }
  }
  return { dir, record, state };
}

/** Every container of the home (ids sorted by creation, oldest first). */
export async function listContainers(home: KindlingHome): Promise<StoredContainer[]> {
  const names = await readdir(containersDir(home)).catch(() => [] as string[]);
  const all = await Promise.all(
    names.filter((n) => !n.startsWith(".")).map((n) => readContainer(containerDir(home, n))),
  );
  return all
    .filter((c): c is StoredContainer => c !== undefined)
    .sort((a, b) => a.record.created.localeCompare(b.record.created));
}

/**
 * A container named by its id, a unique prefix of its id, or its name. Unknown: a KindlingError
 * with code ENOENT; an ambiguous prefix: EAMBIGUOUS.
 */
export function findContainer(all: StoredContainer[], ref: string): StoredContainer {
  const exact = all.find((c) => c.record.id === ref || c.record.name === ref);
  if (exact) return exact;
  const byPrefix = ref.length > 0 ? all.filter((c) => c.record.id.startsWith(ref)) : [];
  if (byPrefix.length === 1) return byPrefix[0]!;
  if (byPrefix.length > 1) {
    throw new KindlingError(
      `container id prefix ${ref} is ambiguous (${byPrefix.length} containers)`,
      "EAMBIGUOUS",
    );
  }
  throw new KindlingError(`no such container: ${ref}`, "ENOENT");
}

export async function removeContainerDir(dir: string): Promise<void> {
  // Rename first: a reader never sees a half-removed container.
  const aside = path.join(path.dirname(dir), `.rm-${path.basename(dir)}-${randomBytes(3).toString("hex")}`);
  await rename(dir, aside).catch(() => {});
  await rm(aside, { recursive: true, force: true });
}
