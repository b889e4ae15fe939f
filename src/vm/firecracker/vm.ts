/**
 * The Firecracker backend: starts one firecracker process for a VmSpec, configures it over its API
 * socket (or with --config-file), and gives the caller the agent's byte stream over hybrid vsock.
 * Setup is a list of steps, each registering its undo, so a failure at any point leaves nothing behind.
 */
import { chown, mkdir, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import type { Duplex } from "node:stream";
import { KindlingError } from "../../util/errors.js";
import { Scope } from "../../util/scope.js";
import type { VmSpec } from "../spec.js";
import { FirecrackerApi } from "./client.js";
import { type JailerOptions, planJail, prepareJail, renderJailerArgs } from "./jailer.js";
import {
  describeExit,
  type ExitInfo,
  resolveFirecracker,
  resolveJailer,
  Supervised,
  tail,
} from "./process.js";
import {
  checkSpec,
  type FirecrackerCall,
  type FirecrackerConfig,
  type Logger,
  type RenderOptions,
  renderApiCalls,
  renderConfigFile,
} from "./render.js";
import { VsockListener, vsockConnect } from "./vsock.js";

/** docs/guest.md: the guest connects to the host (CID 2) on this vsock port. */
export const AGENT_VSOCK_PORT = 1024;
/** The first CID a guest may have (0-2 are reserved). */
export const DEFAULT_GUEST_CID = 3;
/** sockaddr_un.sun_path holds 108 bytes including the NUL. */
const MAX_SOCKET_PATH = 107;

export interface FirecrackerVmOptions {
  /** The firecracker binary; default $KINDLING_FIRECRACKER or `firecracker` on PATH. */
  firecrackerBin?: string;
  /** Firecracker's --id (and the jail's id); default derived from the state directory's name. */
  id?: string;
  /** Configure with one --config-file instead of API calls (the VM boots as soon as firecracker reads it). */
  configFile?: boolean;
  /** vsock port the guest agent connects to (docs/guest.md: kindling.agent_port, default 1024). */
  agentPort?: number;
  guestCid?: number;
  logLevel?: Logger["level"];
  /** How long to wait for the API socket to appear. */
  startTimeoutMs?: number;
  /** How long agentStream() waits for the guest to connect. */
  agentTimeoutMs?: number;
  /** Run firecracker under the jailer (chroot, uid/gid, cgroups). */
  jailer?: JailerOptions;
}

export interface FirecrackerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** One line a user can read: how the VMM ended and the end of its stderr. */
  reason: string;
  /** The last lines of the guest's serial console. */
  consoleTail: string;
}

/** Where this VM's files are, as the host sees them. */
export interface FirecrackerPaths {
  stateDir: string;
  apiSocket: string;
  vsockSocket: string;
  /** <vsock uds>_<agent port>: where the guest's agent connection arrives. */
  agentSocket: string;
  log: string;
  metrics: string;
  console: string;
  stderr: string;
  configFile?: string;
  /** Host path of the chroot when jailed. */
  jailRoot?: string;
}

export interface FirecrackerVm {
  readonly backend: "firecracker";
  readonly id: string;
  readonly pid: number;
  readonly paths: FirecrackerPaths;
  /** The API client (for calls beyond setup, e.g. GET /vm/config or FlushMetrics). */
  readonly api: FirecrackerApi;
  /** The API calls sent during setup (and after, e.g. SendCtrlAltDel), in order. */
  readonly calls: readonly FirecrackerCall[];
  /** The config file written (configFile mode). */
  readonly config?: FirecrackerConfig;
  /** The agent's byte stream: the guest's connection to <uds>_<agent port>. Resolves once per VM. */
  agentStream(): Promise<Duplex>;
  /** A host-initiated vsock connection to a port the guest listens on (CONNECT <port>). */
  connect(port: number, timeoutMs?: number): Promise<Duplex>;
  /** Resolves when the VMM process ends (guest reboot/poweroff, crash, or kill). */
  wait(): Promise<FirecrackerExit>;
  /** Asks the guest to stop (SendCtrlAltDel), then kills the VMM if it has not exited after graceMs. */
  shutdown(graceMs?: number): Promise<FirecrackerExit>;
  /** Kills the VMM now. */
  kill(): Promise<void>;
  /** Kills the VMM if needed and removes its sockets; idempotent. Logs and console stay in stateDir. */
  close(): Promise<void>;
}

export async function startFirecrackerVm(
  spec: VmSpec,
  opts: FirecrackerVmOptions = {},
): Promise<FirecrackerVm> {
  checkSpec(spec);
  const scope = new Scope();
  try {
    return await start(spec, opts, scope);
  } catch (err) {
    await scope.close();
    throw err;
  }
}

async function start(spec: VmSpec, opts: FirecrackerVmOptions, scope: Scope): Promise<FirecrackerVm> {
  const bin = await resolveFirecracker(opts.firecrackerBin);
  const jailerBin = opts.jailer ? await resolveJailer(opts.jailer.jailerBin) : undefined;
  const id = opts.id ?? vmId(spec.stateDir);
  const agentPort = opts.agentPort ?? AGENT_VSOCK_PORT;
  const stateDir = path.resolve(spec.stateDir);
  await mkdir(stateDir, { recursive: true });

  // Paths as firecracker sees them (inside the chroot when jailed) and as we see them.
  const jail = opts.jailer
    ? planJail(spec, id, { ...opts.jailer, execFile: opts.jailer.execFile || bin })
    : undefined;
  const inVm = jail
    ? {
        api: "/run/firecracker.socket",
        vsock: "/run/vsock.sock",
        log: "/logs/firecracker.log",
        metrics: "/logs/metrics.json",
        config: "/run/config.json",
      }
    : {
        api: path.join(stateDir, "api.sock"),
        vsock: path.join(stateDir, "vsock.sock"),
        log: path.join(stateDir, "firecracker.log"),
        metrics: path.join(stateDir, "metrics.json"),
        config: path.join(stateDir, "config.json"),
      };
  const onHost = (p: string) => (jail ? jail.hostPath(p) : p);
  const paths: FirecrackerPaths = {
    stateDir,
    apiSocket: onHost(inVm.api),
    vsockSocket: onHost(inVm.vsock),
    agentSocket: `${onHost(inVm.vsock)}_${agentPort}`,
    log: onHost(inVm.log),
    metrics: onHost(inVm.metrics),
    console: path.join(stateDir, "console.log"),
    stderr: path.join(stateDir, "firecracker.stderr"),
    configFile: opts.configFile ? onHost(inVm.config) : undefined,
    jailRoot: jail?.root,
  };
  for (const p of [paths.apiSocket, paths.agentSocket]) {
    if (Buffer.byteLength(p) > MAX_SOCKET_PATH) {
      throw new KindlingError(
        `socket path ${p} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter KINDLING_HOME`,
      );
    }
  }

  const render: RenderOptions = {
    vsock: { guest_cid: opts.guestCid ?? DEFAULT_GUEST_CID, uds_path: inVm.vsock },
    logger: {
      log_path: inVm.log,
      level: opts.logLevel ?? "Warning",
      show_level: true,
      show_log_origin: false,
    },
    metrics: { metrics_path: inVm.metrics },
    mapPath: jail
      ? (_p, kind, fileId) => jail.files.find((f) => f.kind === kind && f.id === fileId)!.inJail
      : undefined,
  };

  if (jail) {
    if (process.getuid?.() !== 0)
      throw new KindlingError("the jailer must be started as root (it chroots and drops to --uid/--gid)");
    const { undo } = await prepareJail(jail, opts.jailer!, [inVm.log, inVm.metrics]);
    scope.defer("jail", undo);
  } else {
    // Firecracker opens its log and metrics files but does not create them.
    await writeFile(paths.log, "", { flag: "a" });
    await writeFile(paths.metrics, "", { flag: "a" });
  }
  const socketsToRemove = [paths.apiSocket, paths.vsockSocket, paths.agentSocket];
  for (const s of socketsToRemove) await rm(s, { force: true });
  scope.defer("sockets", async () => {
    for (const s of socketsToRemove) await rm(s, { force: true });
  });

  // The guest connects as soon as its agent starts, so the listener must exist before the VM boots.
  const listener = await VsockListener.listen(paths.vsockSocket, agentPort);
  scope.defer("agent listener", () => listener.close());
  // connect(2) on a Unix socket needs write permission: the jailed VMM runs as the jail's uid.
  if (jail) await chown(listener.path, opts.jailer!.uid, opts.jailer!.gid);

  let config: FirecrackerConfig | undefined;
  const fcArgs = ["--api-sock", inVm.api];
  if (!jail) fcArgs.push("--id", id); // the jailer passes --id itself
  if (opts.configFile) {
    config = renderConfigFile(spec, render);
    await writeFile(paths.configFile!, `${JSON.stringify(config, null, 2)}\n`);
    fcArgs.push("--config-file", inVm.config);
  }
  // with a NIC, the VMM runs in the run's network namespace (the jailer joins it itself)
  const netns = spec.network?.netns;
  const jailerOpts = { ...opts.jailer!, execFile: opts.jailer?.execFile || bin, ...(netns ? { netns } : {}) };
  const [cmd, args] = jail
    ? [jailerBin!, renderJailerArgs(id, jailerOpts, fcArgs)]
    : netns
      ? ["nsenter", [`--net=${netns}`, "--", bin, ...fcArgs]]
      : [bin, fcArgs];
  const proc = await Supervised.spawn(cmd, args, {
    cwd: stateDir,
    stdoutPath: paths.console,
    stderrPath: paths.stderr,
  });
  scope.defer("firecracker process", async () => {
    await proc.kill();
  });

  const api = new FirecrackerApi(paths.apiSocket);
  await waitForSocket(paths.apiSocket, proc, opts.startTimeoutMs ?? 10_000, paths.console);
  const fail = async (what: string, err: unknown): Promise<never> => {
    const exit = await proc.waitFor(200);
    const why = exit ? `; ${describeExit("firecracker", exit)}` : "";
    throw new KindlingError(`${what}: ${(err as Error).message}${why}`);
  };
  if (!opts.configFile) {
    for (const call of renderApiCalls(spec, render)) {
      await api
        .call(call.method, call.path, call.body)
        .catch((err) => fail("configuring the Firecracker VM failed", err));
    }
  }

  return makeHandle({
    id,
    spec,
    paths,
    api,
    proc,
    listener,
    scope,
    config,
    agentTimeoutMs: opts.agentTimeoutMs,
  });
}

/** A Firecracker id (alphanumerics and hyphens, as the jailer wants) from the state directory's name. */
export function vmId(stateDir: string): string {
  const base = path
    .basename(path.resolve(stateDir))
    .replace(/[^A-Za-z0-9-]/g, "-")
    .replace(/^-+|-+$/g, "");
  return (base || "kindling").slice(0, 64);
}

/** Polls until the API socket accepts a connection; fails fast if the process exits first. */
async function waitForSocket(
  sock: string,
  proc: Supervised,
  timeoutMs: number,
  consolePath: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await canConnect(sock)) return;
    const exit = await proc.waitFor(20);
    if (exit) {
      const out = exit.stderrTail ? "" : await tail(consolePath, 5);
      throw new KindlingError(
        `${describeExit("firecracker", exit)}${out ? `\n${out}` : ""}\n(before its API socket ${sock} appeared)`,
      );
    }
    if (Date.now() > deadline) {
      throw new KindlingError(`firecracker did not open its API socket ${sock} within ${timeoutMs} ms`);
    }
  }
}

function canConnect(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(sock);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

interface HandleParts {
  id: string;
  spec: VmSpec;
  paths: FirecrackerPaths;
  api: FirecrackerApi;
  proc: Supervised;
  listener: VsockListener;
  scope: Scope;
  config: FirecrackerConfig | undefined;
  agentTimeoutMs?: number;
}

function makeHandle(p: HandleParts): FirecrackerVm {
  const streams = new Set<Duplex>();
  const track = <T extends Duplex>(s: T): T => {
    streams.add(s);
    s.once("close", () => streams.delete(s));
    return s;
  };
  p.scope.defer("vsock streams", () => {
    for (const s of streams) s.destroy();
  });
  const exit = p.proc.exited.then(async (e: ExitInfo) => toVmExit(e, p.paths.console));
  let agent: Promise<Duplex> | undefined;
  let closing: Promise<void> | undefined;

  const abortOnExit = <T>(what: string, work: (signal: AbortSignal) => Promise<T>): Promise<T> => {
    const ac = new AbortController();
    const exited = exit.then((e) => {
      throw new KindlingError(
        `${what}: the VM stopped (${e.reason})${e.consoleTail ? `\n${e.consoleTail}` : ""}`,
      );
    });
    return Promise.race([work(ac.signal), exited]).finally(() => ac.abort());
  };

  return {
    backend: "firecracker",
    id: p.id,
    pid: p.proc.pid,
    paths: p.paths,
    api: p.api,
    calls: p.api.sent,
    config: p.config,
    agentStream() {
      agent ??= abortOnExit("waiting for the guest agent to connect over vsock", async (signal) => {
        const ms = p.agentTimeoutMs ?? 120_000;
        const ac = new AbortController();
        const timer = setTimeout(
          () => ac.abort(new KindlingError(`the guest agent did not connect within ${ms} ms`)),
          ms,
        );
        signal.addEventListener("abort", () => ac.abort(signal.reason), { once: true });
        try {
          return track(await p.listener.accept(ac.signal));
        } finally {
          clearTimeout(timer);
        }
      });
      return agent;
    },
    connect(port, timeoutMs) {
      return abortOnExit(`connecting to guest vsock port ${port}`, async (signal) =>
        track(await vsockConnect(p.paths.vsockSocket, port, { timeoutMs, signal })),
      );
    },
    wait: () => exit,
    async shutdown(graceMs = 5000) {
      if (p.proc.running) {
        // Needs the guest's i8042 driver; a guest without it just gets killed after the grace period.
        await p.api.request("PUT", "/actions", { action_type: "SendCtrlAltDel" }).catch(() => undefined);
        if (!(await p.proc.waitFor(graceMs))) await p.proc.kill();
      }
      return exit;
    },
    async kill() {
      await p.proc.kill();
    },
    close() {
      closing ??= p.scope.close();
      return closing;
    },
  };
}

async function toVmExit(e: ExitInfo, consolePath: string): Promise<FirecrackerExit> {
  return {
    code: e.code,
    signal: e.signal,
    reason: describeExit("firecracker", e),
    consoleTail: await tail(consolePath, 10),
  };
}
