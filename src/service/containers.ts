/**
 * The service's side of containers: create (record + supervisor), watch (learn exits from each
 * supervisor, also of containers adopted from an earlier service), stop, kill, remove.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { type Config, config, loadConfig } from "../config/index.js";
import { pickDefaultVmm } from "../doctor/report.js";
import { isSameProcess } from "../host/process.js";
import { isPathRef, resolveImage } from "../runtime/image.js";
import { parseRunOptions, type RawRunFlags } from "../runtime/options.js";
import { checkTtySize } from "../runtime/pty.js";
import { cleanupStaleRuns } from "../runtime/rundir.js";
import { errorMessage, KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { traceNow, tracer } from "../util/trace.js";
import type { ContainerCreateRequest, ContainerExit, ContainerInspect, ContainerSummary } from "./api.js";
import type { EventBus } from "./events.js";
import {
  type ContainerRecord,
  checkName,
  containerDir,
  containersDir,
  createContainerDir,
  findContainer,
  listContainers,
  logFile,
  newContainerId,
  readContainer,
  removeContainerDir,
  type StoredContainer,
  shimLog,
  shimSocket,
  writeState,
} from "./records.js";
import { SpareSupervisor } from "./spare.js";
import { jsonRequest } from "./unixhttp.js";

const SHIM = fileURLToPath(new URL("./shim.js", import.meta.url));

/** A KindlingError with an HTTP status for the API. */
export class ApiFailure extends KindlingError {
  constructor(
    readonly status: number,
    code: string,
    message: string,
  ) {
    super(message, code);
  }
}

export function summary(c: StoredContainer): ContainerSummary {
  const { record, state } = c;
  return {
    id: record.id,
    name: record.name,
    image: record.image,
    runtime: record.options.runtime,
    command: record.options.command,
    status: state.status,
    created: record.created,
    startedAt: state.startedAt ?? null,
    finishedAt: state.finishedAt ?? null,
    exitCode: state.exitCode ?? null,
  };
}

export function inspect(c: StoredContainer): ContainerInspect {
  const { record, state } = c;
  return {
    ...summary(c),
    rootfs: record.options.rootfs,
    options: record.options as unknown as Record<string, unknown>,
    autoRemove: record.autoRemove,
    state: {
      status: state.status,
      exitCode: state.exitCode ?? null,
      signal: state.signal ?? null,
      error: state.error ?? null,
      stoppedBy: state.stoppedBy ?? null,
      supervisorPid: state.shimPid ?? null,
      prepMs: state.prepMs ?? null,
      bootMs: state.bootMs ?? null,
      firstOutputMs: state.firstOutputMs ?? null,
    },
    network: (state.network as unknown as Record<string, unknown> | undefined) ?? record.network,
    paths: { dir: c.dir, log: logFile(c.dir) },
  };
}

export function exitOf(c: StoredContainer): ContainerExit {
  return {
    id: c.record.id,
    exitCode: c.state.exitCode ?? 125,
    signal: c.state.signal ?? null,
    error: c.state.error ?? null,
  };
}

/** The request's flags as `kindling run` would get them from commander. */
function flagsOf(req: ContainerCreateRequest, runtime: string): RawRunFlags {
  const str = (v: number | string | undefined) => (v === undefined ? undefined : String(v));
  return {
    runtime,
    rootfs: req.rootfs,
    volume: req.volumes ?? [],
    env: req.env ?? [],
    workdir: req.workdir,
    user: req.user,
    memory: str(req.memory),
    cpus: str(req.cpus),
    timeout: str(req.timeout),
    stopTimeout: str(req.stopTimeout),
    hostname: req.hostname,
    entrypoint: Array.isArray(req.entrypoint) ? JSON.stringify(req.entrypoint) : req.entrypoint,
    disk: req.disk,
    mountPacking: req.mountPacking,
    network: req.network,
    publish: req.publish ?? [],
    dns: req.dns ?? [],
    agent: req.agent,
    interactive: req.attach === true && req.interactive === true,
    tty: req.tty === true,
  };
}

export interface ContainerEvents {
  onStart(c: StoredContainer): void;
  onExit(c: StoredContainer): void;
}

export class Containers {
  /** Exits being waited for, by id (one watcher per running container). */
  private readonly watched = new Map<string, Promise<StoredContainer | undefined>>();
  /** Serializes creates: a name is checked and taken atomically. */
  private creating: Promise<unknown> = Promise.resolve();

  /** A supervisor started ahead of time for the next container (spare.ts). */
  readonly spares: SpareSupervisor;

  constructor(
    private readonly home: KindlingHome,
    private readonly events: EventBus,
    private readonly hooks: ContainerEvents,
    opts: { spareSupervisor?: boolean } = {},
  ) {
    const dir = containersDir(home);
    this.spares = new SpareSupervisor(
      () => this.spawnShim(["--spare", `${dir}/`], path.join(dir, ".supervisors.log"), "pipe"),
      opts.spareSupervisor ?? true,
    );
  }

  /**
   * The containers as last seen, by id (oldest first): read from disk once, then kept current by
   * what the service does and learns (create, start, exit from each supervisor, remove), so `ps`
   * reads no files (bench/service-ps.ts). A supervisor's death is learnt by its watcher.
   */
  private cache?: Promise<Map<string, StoredContainer>>;

  private known(): Promise<Map<string, StoredContainer>> {
    this.cache ??= listContainers(this.home).then((all) => new Map(all.map((c) => [c.record.id, c])));
    return this.cache;
  }

  /** Re-reads one container from disk into the listing (gone: dropped). */
  private async refresh(id: string): Promise<StoredContainer | undefined> {
    const c = await readContainer(containerDir(this.home, id));
    const map = await this.known();
    if (c) map.set(id, c);
    else map.delete(id);
    return c;
  }

  async list(): Promise<StoredContainer[]> {
    return [...(await this.known()).values()];
  }

  async find(ref: string): Promise<StoredContainer> {
    try {
      return findContainer(await this.list(), ref);
    } catch (err) {
      const code = (err as KindlingError).code;
      if (code === "ENOENT") throw new ApiFailure(404, "ENOCONTAINER", errorMessage(err));
      if (code === "EAMBIGUOUS") throw new ApiFailure(409, "EAMBIGUOUS", errorMessage(err));
      throw err;
    }
  }

  /** Adopts the containers an earlier service left running: watch each for its exit. */
  async adopt(): Promise<string[]> {
    const adopted: string[] = [];
    for (const c of await this.list()) {
      if (c.state.status === "running" || c.state.status === "starting") {
        this.watch(c.record.id);
        adopted.push(c.record.id);
      } else if (c.state.status === "created" && Date.now() - Date.parse(c.record.created) > 60_000) {
        // Its service died between record and supervisor: it never ran.
        await writeState(c.dir, {
          status: "exited",
          exitCode: 125,
          error: "the service died before it started",
        });
        await this.refresh(c.record.id);
      }
    }
    return adopted;
  }

  async create(req: ContainerCreateRequest): Promise<StoredContainer> {
    const began = traceNow();
    if (typeof req.image !== "string" || req.image.length === 0) {
      throw new ApiFailure(400, "EINVAL", "image: a non-empty string is required");
    }
    if (req.interactive && !req.attach)
      throw new ApiFailure(400, "EINVAL", "interactive containers are not supported detached");
    // The container's settings: the client's (as an in-process run had its own), else ours.
    let settings: Config;
    try {
      settings = req.environment ? loadConfig(req.environment) : config();
    } catch (err) {
      throw new ApiFailure(400, "EINVAL", errorMessage(err));
    }
    const trace = tracer(settings.trace, "service");
    trace("service: create request read", began);
    const cwd = typeof req.cwd === "string" && path.isAbsolute(req.cwd) ? req.cwd : "/";
    const image = isPathRef(req.image) ? path.resolve(cwd, req.image) : req.image;
    let options = await parseRunOptions(
      image,
      req.command ?? [],
      flagsOf(req, req.runtime ?? settings.runtime),
      {},
      cwd,
    ).catch((err) => {
      throw new ApiFailure(400, "EINVAL", errorMessage(err));
    });
    trace("service: options parsed");
    // auto is decided now, so the record (and ps) names the runtime the container runs with
    if (options.runtime === "auto") options = { ...options, runtime: await pickDefaultVmm() };
    await resolveImage(this.home, image).catch((err) => {
      // named as the client gave it (a relative path stays relative)
      const msg = errorMessage(err).replaceAll(image, req.image);
      if (/^no image named|does not exist/.test(msg)) throw new ApiFailure(404, "ENOIMAGE", msg);
      throw new ApiFailure(400, "EINVAL", msg);
    });
    trace("service: image resolved");
    const id = newContainerId();
    const record: ContainerRecord = {
      id,
      name: req.name ?? `c-${id.slice(0, 6)}`,
      image,
      created: new Date().toISOString(),
      options,
      autoRemove: req.autoRemove === true,
      ...(req.attach ? { attach: true } : {}),
      ...(req.tty && req.ttySize ? { ttySize: checkTtySize(req.ttySize) } : {}),
      network: null,
    };
    if (req.name !== undefined) {
      try {
        checkName(req.name);
      } catch (err) {
        throw new ApiFailure(400, "EINVAL", errorMessage(err));
      }
    }
    const take = this.creating.then(async () => {
      if (req.name !== undefined && (await this.list()).some((c) => c.record.name === record.name)) {
        throw new ApiFailure(409, "ENAMEINUSE", `the name ${record.name} is already in use by a container`);
      }
      return createContainerDir(this.home, record, settings);
    });
    this.creating = take.catch(() => {});
    const dir = await take;
    trace("service: record written");
    await this.refresh(id);
    this.events.emit({
      type: "container",
      action: "create",
      id,
      name: record.name,
      attributes: { image: record.image },
    });
    const failure = await this.startShim(dir, settings, trace);
    trace("service: supervisor said ok");
    if (failure) {
      // A supervisor that died before its last word leaves the state as it was: say what happened.
      const now = await readContainer(dir);
      if (now && now.state.status !== "exited") {
        const tail = (await readFile(shimLog(dir), "utf8").catch(() => ""))
          .trim()
          .split("\n")
          .slice(-3)
          .join("; ");
        await writeState(dir, {
          ...now.state,
          status: "exited",
          exitCode: 125,
          error: `${failure}${tail ? ` (${tail})` : ""}`,
        });
      }
    }
    const c = (await this.refresh(id)) ?? { dir, record, state: { status: "exited" as const } };
    if (failure) {
      this.hooks.onExit(c);
      throw new ApiFailure(500, "ESTART", `container ${id} did not start: ${failure}`);
    }
    if (record.attach) {
      // It starts when its client attaches: the start event comes then.
      void jsonRequest(shimSocket(dir), "GET", "/started")
        .then(async () => {
          const now = await this.refresh(id);
          if (now?.state.status === "running") this.hooks.onStart(now);
        })
        .catch(() => {});
    } else this.hooks.onStart(c);
    this.watch(id);
    trace("service: create answered");
    return c;
  }

  /**
   * Starts the container's supervisor (a reused or spare one if ready); undefined once it answers
   * "ok", else the failure.
   */
  private async startShim(
    dir: string,
    settings: Config,
    trace: (step: string) => void,
  ): Promise<string | undefined> {
    // the trace file differs per run; every other setting must match a reused supervisor's last
    const taken = this.spares.take(dir, JSON.stringify({ ...settings, trace: undefined }));
    trace(taken ? "service: spare taken" : "service: supervisor spawned (no spare)");
    let line: string;
    if (taken) line = await taken.answer;
    else {
      const child = this.spawnShim([dir], shimLog(dir));
      line = await new Promise<string>((resolve) => {
        let text = "";
        child.stdout!.on("data", (d: Buffer) => {
          text += d.toString();
          if (text.includes("\n")) resolve(text.split("\n")[0]!);
        });
        child.stdout!.on("end", () => resolve(text || "error the supervisor exited without a word"));
        child.on("error", (err) => resolve(`error ${err.message}`));
      });
      child.stdout!.destroy();
    }
    return line === "ok" ? undefined : line.replace(/^error /, "");
  }

  /** A supervisor process, detached (its own session: it outlives the service). */
  private spawnShim(args: string[], logPath: string, stdin: "ignore" | "pipe" = "ignore"): ChildProcess {
    const errFd = openSync(logPath, "a");
    try {
      const child = spawn(process.execPath, [SHIM, ...args], {
        detached: true,
        stdio: [stdin, "pipe", errFd],
        cwd: "/",
      });
      child.unref();
      return child;
    } finally {
      closeSync(errFd);
    }
  }

  /** Waits (once per container) for the supervisor to report the end, then raises the exit event. */
  private watch(id: string): Promise<StoredContainer | undefined> {
    const known = this.watched.get(id);
    if (known) return known;
    const dir = containerDir(this.home, id);
    const done = (async () => {
      for (;;) {
        const c = await this.refresh(id);
        if (!c || c.state.status === "exited") return c;
        try {
          await jsonRequest(shimSocket(dir), "GET", "/wait");
        } catch {
          // Not listening yet (starting), or gone (exited, died): look again shortly.
          const alive = c.state.shimPid && isSameProcess(c.state.shimPid, c.state.shimStartTime ?? 0);
          if (!alive) await sleep(50);
          else await sleep(200);
        }
      }
    })();
    this.watched.set(id, done);
    void done.then(async (c) => {
      this.watched.delete(id);
      // --rm: its supervisor removes it now (the dir may still be there for a moment)
      if (c?.record.autoRemove) (await this.known()).delete(id);
      if (c) this.hooks.onExit(c);
    });
    return done;
  }

  /** Resolves once the container has ended. */
  async wait(ref: string, signal?: AbortSignal): Promise<StoredContainer> {
    const c = await this.find(ref);
    if (c.state.status === "exited") return c;
    const aborted = new Promise<never>((_, reject) =>
      signal?.addEventListener("abort", () => reject(new Error("client went away")), { once: true }),
    );
    aborted.catch(() => {});
    const ended = await Promise.race([this.watch(c.record.id), aborted]);
    return ended ?? c;
  }

  async kill(ref: string, signal: string): Promise<StoredContainer> {
    const c = await this.find(ref);
    if (c.state.status !== "running") {
      throw new ApiFailure(409, "ENOTRUNNING", `container ${c.record.id} is not running (${c.state.status})`);
    }
    const r = await jsonRequest<{ message?: string; code?: string }>(
      shimSocket(c.dir),
      "POST",
      `/kill?signal=${encodeURIComponent(signal)}`,
      { timeoutMs: 30_000 },
    ).catch(() => ({
      status: 409,
      body: { code: "ENOTRUNNING", message: "the container's supervisor is gone" },
    }));
    if (r.status !== 200)
      throw new ApiFailure(r.status, r.body.code ?? "EKILL", r.body.message ?? "kill failed");
    return (await this.refresh(c.record.id)) ?? c;
  }

  /** TERM, then KILL after `timeout` seconds (default: the container's --stop-timeout); resolves when ended. */
  async stop(ref: string, timeout?: number): Promise<StoredContainer> {
    const c = await this.find(ref);
    if (c.state.status === "exited") return c;
    const q = timeout === undefined ? "" : `?timeout=${timeout}`;
    await jsonRequest(shimSocket(c.dir), "POST", `/stop${q}`).catch(() => undefined);
    return (await this.watch(c.record.id)) ?? c;
  }

  async remove(ref: string, force: boolean): Promise<StoredContainer> {
    const c = await this.find(ref);
    if (c.state.status !== "exited") {
      if (!force) {
        throw new ApiFailure(
          409,
          "ERUNNING",
          `container ${c.record.id} is ${c.state.status}: stop it first, or remove it with force (rm -f)`,
        );
      }
      await jsonRequest(shimSocket(c.dir), "POST", "/stop?timeout=0").catch(() => undefined);
      const ended = await Promise.race([this.watch(c.record.id), sleep(60_000).then(() => undefined)]);
      if (ended?.state.status !== "exited") {
        throw new ApiFailure(500, "ESTOP", `container ${c.record.id} did not stop within 60 s`);
      }
    }
    if (c.state.error === "the container's supervisor died") {
      // Nobody released what it held (process, mounts, network): the crash cleanup does, now.
      const report = await cleanupStaleRuns(this.home);
      if (report.errors.length > 0) throw new ApiFailure(500, "ECLEANUP", report.errors.join("; "));
    }
    await removeContainerDir(c.dir);
    (await this.known()).delete(c.record.id);
    this.events.emit({ type: "container", action: "remove", id: c.record.id, name: c.record.name });
    return c;
  }

  /** Running containers (for idle exit and metrics). */
  async running(): Promise<number> {
    return (await this.list()).filter((c) => c.state.status !== "exited").length;
  }
}
