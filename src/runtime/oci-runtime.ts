import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fstatSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import type { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { hostNofileLimit } from "../host/proc.js";
import { setUpNetwork } from "../network/attach.js";
import { networkSettings } from "../network/conflist.js";
import { containerResolvConf, hostResolvConf } from "../network/resolv.js";
import type { NetworkInfo, NetworkMode } from "../network/types.js";
import { KindlingError } from "../util/errors.js";
import { exec } from "../util/exec.js";
import type { Scope } from "../util/scope.js";
import { trace } from "../util/trace.js";
import { buildOciSpec } from "./oci.js";
import { buildProcessSpec, mergeEnv } from "./process.js";
import { checkTtySize, type PtyProcess, spawnOnPty } from "./pty.js";
import { type Resource, releaseResource } from "./resources.js";
import { mountOverlay, type OverlayLayers, openRootfsLower, overlayLayers } from "./rootfs.js";
import type { RunDir } from "./rundir.js";
import { exitStatusOf } from "./status.js";
import type {
  Container,
  ExecIo,
  ExecProcess,
  ExecSpec,
  ExitStatus,
  KillSignal,
  PrepareRequest,
  RunStdio,
  Runtime,
  StdioMode,
  TtySize,
  VolumeSpec,
} from "./types.js";
import { readUserDb } from "./users.js";
import { findBinary } from "./which.js";

/** What differs between OCI runtimes that take a bundle: the binary and its global flags. */
export interface OciFlavor {
  name: "runc" | "runsc";
  /** Flags before the subcommand, besides --root and --log. */
  globalArgs: string[];
  /** What to tell the user when the binary is missing. */
  installHint: string;
  /**
   * Stdio that must not be handed to the runtime as is, but relayed through pipes: gVisor writes
   * a regular file from offset 0 (`(echo a; kindling run ...) > f` lost "a"), and shuts a socket
   * down when the container ends (our own stderr, and our caller's, then fail with EPIPE).
   */
  relayStdio: boolean;
  /** Global flags for `run` only, per --network. */
  runArgs?(network: NetworkMode): string[];
  /**
   * The runtime mounts the rootfs overlay itself, at "/" in the container's mount namespace (an
   * `overlay` entry first in config.json's mounts): no mount on the host to make or to release,
   * two processes fewer per run (bench/cli-cost.ts). Else Kindling mounts it on the host.
   */
  mountsRootOverlay: boolean;
}

export const RUNC: OciFlavor = {
  name: "runc",
  globalArgs: [],
  installHint: "apt-get install runc",
  relayStdio: false,
  mountsRootOverlay: true,
};

/**
 * gVisor: ptrace is the platform that works here (kvm hangs under PVM). Its network flag is per run
 * (runArgs): `sandbox` gives its netstack the interfaces and routes of the namespace in the spec.
 */
export const RUNSC: OciFlavor = {
  name: "runsc",
  globalArgs: ["--platform=ptrace"],
  installHint: "apt-get install runsc",
  relayStdio: true,
  runArgs: (network) => [`--network=${network === "none" ? "none" : "host"}`],
  // gVisor's gofer serves the rootfs directory as it is on the host
  mountsRootOverlay: false,
};

/**
 * runc and runsc: the rootfs is an overlay on the image's SquashFS (see rootfs.ts), the process is
 * described by an OCI bundle, and `<runtime> run` runs it in the foreground, so its exit status is
 * the container's.
 */
export class OciRuntime implements Runtime {
  private binary?: string;

  constructor(private readonly flavor: OciFlavor) {}

  get name(): "runc" | "runsc" {
    return this.flavor.name;
  }

  async checkHost(): Promise<void> {
    this.binary = await findBinary(this.flavor.name);
    if (!this.binary) {
      throw new KindlingError(
        `--runtime ${this.flavor.name}: ${this.flavor.name} is not installed (${this.flavor.installHint})`,
      );
    }
  }

  async prepare(req: PrepareRequest, scope: Scope): Promise<Container> {
    if (!this.binary) await this.checkHost();
    const { runDir, options, image } = req;
    const bundle = runDir.file("bundle");
    const mode = options.network ?? "bridge";
    // the network, the rootfs and the image's users at the same time (each is mostly waiting for
    // processes or files); all settle before an error is thrown, so the scope never releases while
    // one is still acquiring. The users come from the lower layer: the overlay's upper is empty.
    const lower = openRootfsLower(runDir, scope, image.blockImage);
    const rootfsDir = `${bundle}/rootfs`;
    const [netting, layering, users] = await Promise.allSettled([
      setUpNetwork({
        home: runDir.home,
        runId: req.id,
        mode,
        ports: options.publish ?? [],
        settings: networkSettings(),
        holder: runDir,
        scope,
      }),
      lower.then(async (l): Promise<{ layers?: OverlayLayers }> => {
        if (this.flavor.mountsRootOverlay) return { layers: await overlayLayers(runDir, l, rootfsDir) };
        await mountOverlay(runDir, scope, l, rootfsDir);
        return {};
      }),
      lower.then((l) => readUserDb(l.dir)),
    ]);
    if (layering.status === "rejected") throw layering.reason;
    if (netting.status === "rejected") throw netting.reason;
    if (users.status === "rejected") throw users.reason;
    const net = netting.value;
    const { layers } = layering.value;
    const openImage = (await lower).image;
    trace("oci: network and rootfs ready");
    const hostname = options.hostname ?? req.id;
    const proc = buildProcessSpec(image.config, options, users.value, hostname);
    const [extraBinds, nofile] = await Promise.all([
      writeEtcFiles(runDir, hostname, net.info, options.dns ?? []),
      hostNofileLimit(),
      runDir.setNetwork(net.info),
    ]);
    const spec = buildOciSpec({
      process: proc,
      hostname,
      rootfs: "rootfs",
      volumes: options.volumes,
      netns: mode === "host" ? "host" : net.netnsPath,
      extraBinds,
      memoryMiB: options.memoryMiB,
      cpus: options.cpus,
      nofile,
      cgroupsPath: `/kindling/${req.id}`,
      rootOverlay: layers,
      terminal: options.tty === true,
    });
    await writeFile(`${bundle}/config.json`, `${JSON.stringify(spec, null, 2)}\n`);
    trace("oci: bundle written");
    // what the image's problem() compares against is known before the process reads anything
    await openImage.ready;
    const imageProblem = async () => openImage.problem?.().catch(() => undefined);
    const holdImage = async (pid: number) => openImage.holdFor?.(pid).catch(() => {});
    return new OciContainer(
      this.flavor,
      this.binary!,
      req.id,
      runDir,
      bundle,
      req.stdio,
      scope,
      imageProblem,
      mode,
      holdImage,
      options.tty === true,
      net.published,
    );
  }
}

/** Docker's /etc/hosts: localhost, then the container's name on its address. */
export function etcHosts(hostname: string, ip?: string): string {
  return `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n${ip ?? "127.0.1.1"}\t${hostname}\n`;
}

/** A regular file or a socket: what gVisor mishandles as stdio (see OciFlavor.relayStdio). */
function isFileOrSocket(fd: number): boolean {
  try {
    const st = fstatSync(fd);
    return st.isFile() || st.isSocket();
  } catch {
    return false;
  }
}

/**
 * /etc/hosts, /etc/hostname and /etc/resolv.conf, as Docker provides them (writable, per run): the
 * container's name on its address (127.0.1.1 without one), the resolver by Docker's rules.
 */
async function writeEtcFiles(
  runDir: RunDir,
  hostname: string,
  net: NetworkInfo,
  dns: string[],
): Promise<VolumeSpec[]> {
  const dir = runDir.file("etc");
  await mkdir(dir, { recursive: true });
  await writeFile(`${dir}/hostname`, `${hostname}\n`);
  await writeFile(`${dir}/hosts`, etcHosts(hostname, net.ip));
  await writeFile(`${dir}/resolv.conf`, containerResolvConf(await hostResolvConf(), net.mode, dns));
  return ["hosts", "hostname", "resolv.conf"].map((f) => ({
    source: `${dir}/${f}`,
    destination: `/etc/${f}`,
    readOnly: false,
  }));
}

/** As with Docker: a command that cannot be found is 127, one that cannot be run 126 (else undefined). */
function commandFailureStatus(failure: string): 126 | 127 | undefined {
  const notFound = /exec: .*(executable file not found|no such file or directory)|error finding executable/i;
  if (notFound.test(failure)) return 127;
  if (/exec: .*permission denied/i.test(failure)) return 126;
  return undefined;
}

class OciContainer implements Container {
  private child?: ChildProcess;
  private pty?: PtyProcess;
  private ptyEnded = false;
  private exited?: Promise<ExitStatus>;
  private readonly root: string;
  private readonly logFile: string;
  private readonly resource: Resource;

  constructor(
    private readonly flavor: OciFlavor,
    private readonly binary: string,
    readonly id: string,
    private readonly runDir: RunDir,
    private readonly bundle: string,
    private readonly stdio: RunStdio,
    private readonly scope: Scope,
    private readonly imageProblem: () => Promise<string | undefined>,
    private readonly network: NetworkMode,
    /** The runtime's process outlives us if we are killed: it keeps the image served (and kept). */
    private readonly holdImage: (pid: number) => Promise<void>,
    /** `-t`: the runtime runs on a host pty (pty.ts) and relays the container's own pty to it. */
    private readonly tty = false,
    /** `-p`: the ports are published beside the start (src/network attach.ts); awaited before it counts as started. */
    private readonly published?: Promise<void>,
  ) {
    // A runtime state root per run: containers of different homes or runs never see each other.
    this.root = runDir.file("state");
    this.logFile = runDir.file("runtime.log");
    this.resource = { kind: "oci-container", binary, root: this.root, id };
  }

  /** Only `run` logs to the log file: the errors found there are then the run's own. */
  private globalArgs(log = false): string[] {
    const logArgs = log ? ["--log", this.logFile, "--log-format", "json"] : [];
    return ["--root", this.root, ...logArgs, ...this.flavor.globalArgs];
  }

  async start(): Promise<{ stdout: Readable | null; stderr: Readable | null }> {
    const streams = await this.startProcess();
    if (this.published) {
      try {
        await this.published;
      } catch (err) {
        await this.kill("KILL").catch(() => {});
        throw err;
      }
      trace("oci: ports published");
    }
    return streams;
  }

  private async startProcess(): Promise<{ stdout: Readable | null; stderr: Readable | null }> {
    await this.runDir.hold(this.scope, this.resource);
    trace("oci: container held");
    if (this.tty) return this.startOnPty();
    const relay = (fd: number, mode: StdioMode) =>
      this.flavor.relayStdio && mode === "inherit" && isFileOrSocket(fd);
    const given = typeof this.stdio.stdin === "object" ? this.stdio.stdin : undefined;
    const relayIn = given !== undefined || relay(0, this.stdio.stdin as StdioMode);
    const relayOut = relay(1, this.stdio.stdout);
    const relayErr = relay(2, this.stdio.stderr);
    const stdin = relayIn ? "pipe" : (this.stdio.stdin as StdioMode);
    const stdout = relayOut ? "pipe" : this.stdio.stdout;
    const stderr = relayErr ? "pipe" : this.stdio.stderr;
    const runArgs = this.flavor.runArgs?.(this.network) ?? [];
    const child = spawn(
      this.binary,
      [...this.globalArgs(true), ...runArgs, "run", "--bundle", this.bundle, this.id],
      {
        cwd: this.bundle,
        stdio: [stdin, stdout, stderr],
        // Its own process group: a terminal's Ctrl-C reaches kindling only, which then stops the
        // container its way (TERM, grace, KILL). An interactive terminal session stays in the
        // foreground group so the process can read the terminal.
        detached: !(this.stdio.stdin === "inherit" && process.stdin.isTTY),
      },
    );
    this.child = child;
    trace(`oci: ${this.flavor.name} spawned`);
    if (child.pid) await this.holdImage(child.pid);
    trace("oci: image held for its pid");
    if (relayIn) {
      const source = given ?? process.stdin;
      child.stdin!.on("error", () => {}); // the process may exit without reading it all
      source.pipe(child.stdin!);
      // Kindling reads nothing else: once the container is gone, stop reading (and exit).
      child.on("close", () => {
        source.unpipe(child.stdin!);
        source.destroy();
      });
    }
    if (relayOut) child.stdout!.pipe(process.stdout, { end: false });
    if (relayErr) child.stderr!.pipe(process.stderr, { end: false });
    this.exited = new Promise((resolve, reject) => {
      child.on("error", (err) => reject(new KindlingError(`cannot start ${this.binary}: ${err.message}`)));
      child.on("exit", () => trace(`oci: ${this.flavor.name} exited`));
      child.on("close", (code, signal) => {
        trace(`oci: ${this.flavor.name} streams closed`);
        void this.ended(code, signal).then(resolve, reject);
      });
    });
    // The caller awaits wait(); keep an early failure from being an unhandled rejection meanwhile.
    this.exited.catch(() => {});
    return { stdout: relayOut ? null : child.stdout, stderr: relayErr ? null : child.stderr };
  }

  /**
   * The size the runtime gives the container's pty before the process starts (the client's size is
   * known only once it attached, after config.json was written).
   */
  private async setConsoleSize(size: TtySize): Promise<void> {
    const file = `${this.bundle}/config.json`;
    const spec = JSON.parse(await readFile(file, "utf8")) as { process: Record<string, unknown> };
    spec.process.consoleSize = consoleSize(size);
    await writeFile(file, `${JSON.stringify(spec, null, 2)}\n`);
  }

  /** `-t`: `<runtime> run` on a host pty; its output is the terminal's (stdout and stderr merged). */
  private async startOnPty(): Promise<{ stdout: Readable | null; stderr: Readable | null }> {
    const runArgs = this.flavor.runArgs?.(this.network) ?? [];
    const size = checkTtySize(this.stdio.tty);
    await this.setConsoleSize(size);
    const pty = await spawnOnPty(
      this.binary,
      [...this.globalArgs(true), ...runArgs, "run", "--bundle", this.bundle, this.id],
      { cwd: this.bundle, size },
    );
    this.pty = pty;
    await this.holdImage(pty.pid);
    const given = typeof this.stdio.stdin === "object" ? this.stdio.stdin : undefined;
    const input = given ?? (this.stdio.stdin === "inherit" ? process.stdin : undefined);
    const onInput = (d: Buffer) => pty.write(d);
    input?.on("data", onInput);
    const output = pty.output;
    if (this.stdio.stdout === "inherit") output.pipe(process.stdout, { end: false });
    else if (this.stdio.stdout === "ignore") output.resume();
    this.exited = pty.exited.then((e) => {
      this.ptyEnded = true;
      input?.off("data", onInput);
      return this.ended(e.signal ? null : e.status, e.signal ?? null);
    });
    this.exited.catch(() => {});
    return { stdout: this.stdio.stdout === "pipe" ? output : null, stderr: null };
  }

  resize(size: TtySize): void {
    this.pty?.resize(checkTtySize(size));
  }

  wait(): Promise<ExitStatus> {
    if (!this.exited) return Promise.reject(new Error("container not started"));
    return this.exited;
  }

  /** The status once the runtime exited: the process's, unless the runtime or the image failed. */
  private async ended(code: number | null, signal: NodeJS.Signals | null): Promise<ExitStatus> {
    const [failure, problem] = await Promise.all([this.runtimeError(), this.imageProblem()]);
    if (failure) {
      if (problem) throw new KindlingError(`${this.flavor.name} failed: ${failure} (${problem})`);
      const status = commandFailureStatus(failure);
      if (status) return { status, message: failure };
      throw new KindlingError(`${this.flavor.name} failed: ${failure}`);
    }
    const status = exitStatusOf(code, signal);
    return problem ? { ...status, problem } : status;
  }

  /** The runtime's own last error, if it logged one: then the status is its, not the process's. */
  private async runtimeError(file = this.logFile): Promise<string | undefined> {
    let text = "";
    try {
      text = await readFile(file, "utf8");
    } catch {
      return undefined;
    }
    let last: string | undefined;
    for (const line of text.split("\n")) {
      try {
        const entry = JSON.parse(line) as { level?: string; msg?: string };
        if (entry.level === "error" || entry.level === "fatal") last = entry.msg;
      } catch {
        // not JSON (a panic trace): ignore
      }
    }
    return last;
  }

  private running(): boolean {
    if (this.pty) return !this.ptyEnded;
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  async kill(signal: KillSignal): Promise<void> {
    // Right after spawn the container may not exist yet, or only as the runtime's init waiting to
    // exec the process: a TERM then kills that init (runc reports status 0) instead of reaching the
    // process. So signals other than KILL wait until the process runs. Retry while the runtime runs.
    for (let attempt = 0; this.running() && attempt < 200; attempt++) {
      if (signal === "KILL" || (await this.state()) === "running") {
        const r = await exec(this.binary, [...this.globalArgs(), "kill", this.id, signal], {
          allowFailure: true,
        });
        if (r.code === 0) return;
      }
      await sleep(50);
    }
  }

  /** The container's state as the runtime reports it ("created", "running", "stopped"). */
  private async state(): Promise<string | undefined> {
    const r = await exec(this.binary, [...this.globalArgs(), "state", this.id], { allowFailure: true });
    try {
      return (JSON.parse(r.stdout) as { status?: string }).status;
    } catch {
      return undefined;
    }
  }

  /** `<runtime> exec`: runc starts from the container's process spec (user, env, cwd), these args. */
  async exec(spec: ExecSpec, io: ExecIo): Promise<ExecProcess> {
    // Right after spawn the runtime may not have made the container yet ("container does not exist",
    // status 255): wait, bounded, until its process runs, as kill() does.
    for (let attempt = 0; this.running() && attempt < 200; attempt++) {
      if ((await this.state()) === "running") break;
      await sleep(50);
    }
    if (!this.running()) throw new KindlingError(`container ${this.id} is not running`);
    const flags = [...(spec.cwd ? ["--cwd", spec.cwd] : []), ...spec.env.flatMap((e) => ["--env", e])];
    // its own log: a program it cannot start is its error there (127/126 as for run), not the process's
    const log = this.runDir.file(`exec-${randomBytes(4).toString("hex")}.log`);
    const logArgs = ["--log", log, "--log-format", "json"];
    if (io.tty) {
      // runsc exec has no --tty: a process file with `terminal` (the container's process, these args)
      // A process file, not --tty: runsc exec has no --tty, and the file's consoleSize sizes the pty
      // before the process starts (runc's --tty copies the size only after: a quick `stty size` saw 0 0).
      const file = await this.execProcessFile(spec, checkTtySize(io.tty), log.replace(/\.log$/, ".json"));
      return this.execOnPty([...logArgs, ...this.globalArgs(), "exec", "--process", file, this.id], log, io);
    }
    const child = spawn(
      this.binary,
      [...logArgs, ...this.globalArgs(), "exec", ...flags, this.id, ...spec.args],
      { stdio: [io.stdin ? "pipe" : "ignore", "pipe", "pipe"] },
    );
    if (io.stdin && child.stdin) {
      child.stdin.on("error", () => {}); // the process may exit without reading it all
      io.stdin.pipe(child.stdin);
    }
    child.stdout!.pipe(io.stdout, { end: false });
    child.stderr!.pipe(io.stderr, { end: false });
    const exited = new Promise<ExitStatus>((resolve, reject) => {
      child.on("error", (err) => reject(new KindlingError(`cannot start ${this.binary}: ${err.message}`)));
      child.on("close", (code, signal) => {
        const status = exitStatusOf(code, signal);
        const failed = code !== 0 ? this.runtimeError(log) : Promise.resolve(undefined);
        void failed
          .then(
            (failure) => {
              const decided = failure ? commandFailureStatus(failure) : undefined;
              resolve(decided ? { status: decided, message: failure } : status);
            },
            () => resolve(status),
          )
          .finally(() => rm(log, { force: true }).catch(() => {}));
      });
    });
    exited.catch(() => {});
    return {
      exited,
      kill: (signal: KillSignal) => {
        if (child.pid) process.kill(child.pid, `SIG${signal}` as NodeJS.Signals);
      },
    };
  }

  /** An exec's OCI process on a terminal: the container's (user, env, cwd) with these args and env. */
  private async execProcessFile(spec: ExecSpec, size: TtySize, file: string): Promise<string> {
    const { process: main } = JSON.parse(await readFile(`${this.bundle}/config.json`, "utf8")) as {
      process: { env?: string[]; cwd?: string };
    };
    const proc = {
      ...main,
      terminal: true,
      consoleSize: consoleSize(size),
      args: spec.args,
      env: mergeEnv(main.env ?? [], spec.env),
      cwd: spec.cwd ?? main.cwd ?? "/",
    };
    await writeFile(file, JSON.stringify(proc));
    return file;
  }

  /** `exec -t`: `<runtime> exec` with a terminal, on a host pty, as startOnPty. */
  private async execOnPty(args: string[], log: string, io: ExecIo): Promise<ExecProcess> {
    const pty = await spawnOnPty(this.binary, args, { size: checkTtySize(io.tty) });
    const onInput = (d: Buffer) => pty.write(d);
    io.stdin?.on("data", onInput);
    pty.output.pipe(io.stdout, { end: false });
    const exited = pty.exited.then(async (status) => {
      io.stdin?.off("data", onInput);
      const failure = status.status !== 0 ? await this.runtimeError(log).catch(() => undefined) : undefined;
      await rm(log, { force: true }).catch(() => {});
      await rm(log.replace(/\.log$/, ".json"), { force: true }).catch(() => {});
      const decided = failure ? commandFailureStatus(failure) : undefined;
      return decided ? { status: decided, message: failure } : status;
    });
    exited.catch(() => {});
    return {
      exited,
      kill: (signal: KillSignal) => {
        try {
          process.kill(pty.pid, `SIG${signal}` as NodeJS.Signals);
        } catch {
          // already gone
        }
      },
      resize: (size) => pty.resize(checkTtySize(size)),
    };
  }

  async delete(): Promise<void> {
    await releaseResource(this.resource);
  }
}

/** OCI's process.consoleSize of a window size. */
function consoleSize(size: TtySize): { height: number; width: number } {
  return { height: size.rows, width: size.cols };
}
