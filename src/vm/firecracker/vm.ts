/**
 * The Firecracker backend: starts one firecracker process for a VmSpec, configures it over its API
 * socket (or with --config-file), and gives the caller the agent's byte stream over hybrid vsock.
 * Setup is a list of named steps (firecrackerBootSteps), each registering its undo, so a failure at any
 * point leaves nothing behind; the jailer and the config file are adaptations of that list.
 */
import { chown, mkdir, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import type { Duplex } from "node:stream";
import { KindlingError } from "../../util/errors.js";
import { Scope } from "../../util/scope.js";
import type { VmSpec } from "../spec.js";
import { StepList } from "../steps.js";
import { FirecrackerApi } from "./client.js";
import { type JailerOptions, type JailLayout, planJail, prepareJail, renderJailerArgs } from "./jailer.js";
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
import { type FirecrackerSnapshotFiles, withSnapshotLoad } from "./snapshot.js";
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
  /** Restore this snapshot instead of booting (snapshot.ts: load, this spec's drives, resume). */
  snapshotLoad?: FirecrackerSnapshotFiles;
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
  const scope = new Scope();
  try {
    const ctx: FirecrackerBoot = { spec, opts, ...initialBoot(spec, opts) };
    await firecrackerBootSteps(opts, spec).run(ctx, scope);
    return makeHandle({
      id: ctx.id,
      spec,
      paths: ctx.paths!,
      api: ctx.api!,
      proc: ctx.proc!,
      listener: ctx.listener!,
      scope,
      config: ctx.config,
      agentTimeoutMs: opts.agentTimeoutMs,
    });
  } catch (err) {
    await scope.close();
    throw err;
  }
}

/** Paths as firecracker sees them: in the state directory, or inside the chroot when jailed. */
interface InVmPaths {
  api: string;
  vsock: string;
  log: string;
  metrics: string;
  config: string;
}

/** What the boot steps share: each step fills in what the later ones use. */
export interface FirecrackerBoot {
  readonly spec: VmSpec;
  readonly opts: FirecrackerVmOptions;
  readonly id: string;
  readonly agentPort: number;
  readonly stateDir: string;
  bin?: string;
  inVm?: InVmPaths;
  paths?: FirecrackerPaths;
  render?: RenderOptions;
  /** firecracker's own arguments */
  fcArgs: string[];
  listener?: VsockListener;
  config?: FirecrackerConfig;
  proc?: Supervised;
  api?: FirecrackerApi;
}

function initialBoot(spec: VmSpec, opts: FirecrackerVmOptions) {
  return {
    id: opts.id ?? vmId(spec.stateDir),
    agentPort: opts.agentPort ?? AGENT_VSOCK_PORT,
    stateDir: path.resolve(spec.stateDir),
    fcArgs: [] as string[],
  };
}

/** Host paths of a VM whose files firecracker sees at `inVm` (mapped by onHost when jailed). */
function planPaths(ctx: FirecrackerBoot, inVm: InVmPaths, onHost: (p: string) => string, jailRoot?: string) {
  ctx.inVm = inVm;
  ctx.paths = {
    stateDir: ctx.stateDir,
    apiSocket: onHost(inVm.api),
    vsockSocket: onHost(inVm.vsock),
    agentSocket: `${onHost(inVm.vsock)}_${ctx.agentPort}`,
    log: onHost(inVm.log),
    metrics: onHost(inVm.metrics),
    console: path.join(ctx.stateDir, "console.log"),
    stderr: path.join(ctx.stateDir, "firecracker.stderr"),
    configFile: ctx.opts.configFile ? onHost(inVm.config) : undefined,
    jailRoot,
  };
  ctx.render = {
    vsock: { guest_cid: ctx.opts.guestCid ?? DEFAULT_GUEST_CID, uds_path: inVm.vsock },
    logger: {
      log_path: inVm.log,
      level: ctx.opts.logLevel ?? "Warning",
      show_level: true,
      show_log_origin: false,
    },
    metrics: { metrics_path: inVm.metrics },
  };
  ctx.fcArgs = ["--api-sock", inVm.api];
}

async function spawnVmm(ctx: FirecrackerBoot, scope: Scope, cmd: string, args: string[]): Promise<void> {
  const proc = await Supervised.spawn(cmd, args, {
    cwd: ctx.stateDir,
    stdoutPath: ctx.paths!.console,
    stderrPath: ctx.paths!.stderr,
  });
  ctx.proc = proc;
  scope.defer("firecracker process", async () => {
    await proc.kill();
  });
}

/** The steps of a plain (unjailed) boot configured over the API; see withConfigFile and withJailer. */
const DEFAULT_STEPS: StepList<FirecrackerBoot> = StepList.of<FirecrackerBoot>(
  { name: "validate-spec", run: (ctx) => checkSpec(ctx.spec) },
  {
    name: "resolve-firecracker",
    run: async (ctx) => {
      ctx.bin = await resolveFirecracker(ctx.opts.firecrackerBin);
    },
  },
  {
    name: "make-state-dir",
    run: async (ctx) => {
      await mkdir(ctx.stateDir, { recursive: true });
    },
  },
  {
    name: "plan-paths",
    run: (ctx) => {
      const at = (name: string) => path.join(ctx.stateDir, name);
      planPaths(
        ctx,
        {
          api: at("api.sock"),
          vsock: at("vsock.sock"),
          log: at("firecracker.log"),
          metrics: at("metrics.json"),
          config: at("config.json"),
        },
        (p) => p,
      );
      ctx.fcArgs.push("--id", ctx.id);
    },
  },
  {
    name: "check-socket-paths",
    run: (ctx) => {
      for (const p of [ctx.paths!.apiSocket, ctx.paths!.agentSocket]) {
        if (Buffer.byteLength(p) > MAX_SOCKET_PATH) {
          throw new KindlingError(
            `socket path ${p} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter KINDLING_HOME`,
          );
        }
      }
    },
  },
  {
    name: "create-log-files",
    run: async (ctx) => {
      // Firecracker opens its log and metrics files but does not create them.
      await writeFile(ctx.paths!.log, "", { flag: "a" });
      await writeFile(ctx.paths!.metrics, "", { flag: "a" });
    },
  },
  {
    name: "clean-sockets",
    run: async (ctx, scope) => {
      const p = ctx.paths!;
      const sockets = [p.apiSocket, p.vsockSocket, p.agentSocket];
      for (const s of sockets) await rm(s, { force: true });
      scope.defer("sockets", async () => {
        for (const s of sockets) await rm(s, { force: true });
      });
    },
  },
  {
    // The guest connects as soon as its agent starts, so the listener must exist before the VM boots.
    name: "listen-agent",
    run: async (ctx, scope) => {
      const listener = await VsockListener.listen(ctx.paths!.vsockSocket, ctx.agentPort);
      ctx.listener = listener;
      scope.defer("agent listener", () => listener.close());
    },
  },
  { name: "start-vmm", run: (ctx, scope) => spawnVmm(ctx, scope, ctx.bin!, ctx.fcArgs) },
  {
    name: "wait-api-socket",
    run: async (ctx) => {
      ctx.api = new FirecrackerApi(ctx.paths!.apiSocket);
      await waitForSocket(
        ctx.paths!.apiSocket,
        ctx.proc!,
        ctx.opts.startTimeoutMs ?? 10_000,
        ctx.paths!.console,
      );
    },
  },
  {
    name: "configure-api",
    run: async (ctx) => {
      for (const call of renderApiCalls(ctx.spec, ctx.render!)) {
        await ctx.api!.call(call.method, call.path, call.body).catch(async (err) => {
          const exit = await ctx.proc!.waitFor(200);
          const why = exit ? `; ${describeExit("firecracker", exit)}` : "";
          throw new KindlingError(`configuring the Firecracker VM failed: ${(err as Error).message}${why}`);
        });
      }
    },
  },
);

/** --config-file: one document written before the start (the VM boots as soon as firecracker reads it). */
export function withConfigFile(steps: StepList<FirecrackerBoot>): StepList<FirecrackerBoot> {
  return steps.remove("configure-api").insertBefore("start-vmm", {
    name: "write-config-file",
    run: async (ctx) => {
      const config = renderConfigFile(ctx.spec, ctx.render!);
      ctx.config = config;
      await writeFile(ctx.paths!.configFile!, `${JSON.stringify(config, null, 2)}\n`);
      ctx.fcArgs.push("--config-file", ctx.inVm!.config);
    },
  });
}

/**
 * The jailer: paths inside the chroot, the chroot laid out instead of plain log files, the agent socket
 * handed to the jail's uid, and the jailer (which execs firecracker) started instead of firecracker.
 */
export function withJailer(
  steps: StepList<FirecrackerBoot>,
  jailer: JailerOptions,
): StepList<FirecrackerBoot> {
  let jailerBin = "";
  let jail: JailLayout | undefined;
  // with a NIC, the jailer joins the run's network namespace itself
  const jailOpts = (ctx: FirecrackerBoot): JailerOptions => {
    const netns = ctx.spec.network?.netns;
    return { ...jailer, execFile: jailer.execFile || ctx.bin!, ...(netns ? { netns } : {}) };
  };
  return steps
    .insertAfter("resolve-firecracker", {
      name: "resolve-jailer",
      run: async () => {
        jailerBin = await resolveJailer(jailer.jailerBin);
      },
    })
    .swap({
      name: "plan-paths",
      run: (ctx) => {
        const layout = planJail(ctx.spec, ctx.id, jailOpts(ctx));
        jail = layout;
        planPaths(
          ctx,
          {
            api: "/run/firecracker.socket",
            vsock: "/run/vsock.sock",
            log: "/logs/firecracker.log",
            metrics: "/logs/metrics.json",
            config: "/run/config.json",
          },
          (p) => layout.hostPath(p),
          layout.root,
        );
        // the jailer passes --id itself; drives and kernel are at their paths inside the chroot
        ctx.render!.mapPath = (_p, kind, fileId) =>
          layout.files.find((f) => f.kind === kind && f.id === fileId)!.inJail;
      },
    })
    .swap({
      name: "create-log-files",
      run: async (ctx, scope) => {
        if (process.getuid?.() !== 0)
          throw new KindlingError("the jailer must be started as root (it chroots and drops to --uid/--gid)");
        const { undo } = await prepareJail(jail!, jailer, [ctx.inVm!.log, ctx.inVm!.metrics]);
        scope.defer("jail", undo);
      },
    })
    .insertAfter("listen-agent", {
      // connect(2) on a Unix socket needs write permission: the jailed VMM runs as the jail's uid.
      name: "chown-agent-socket",
      run: (ctx) => chown(ctx.listener!.path, jailer.uid, jailer.gid),
    })
    .swap({
      name: "start-vmm",
      run: (ctx, scope) =>
        spawnVmm(ctx, scope, jailerBin, renderJailerArgs(ctx.id, jailOpts(ctx), ctx.fcArgs)),
    });
}

/** With a NIC, the VMM runs in the run's network namespace: nsenter execs it (same pid). */
export function withNetworkNamespace(
  steps: StepList<FirecrackerBoot>,
  netns: string,
): StepList<FirecrackerBoot> {
  return steps.swap({
    name: "start-vmm",
    run: (ctx, scope) => spawnVmm(ctx, scope, "nsenter", [`--net=${netns}`, "--", ctx.bin!, ...ctx.fcArgs]),
  });
}

/**
 * The boot steps for this VM: the default list, adapted for a config file, a network namespace and the
 * jailer (which joins the namespace itself, so it comes last and replaces how the VMM starts).
 */
export function firecrackerBootSteps(opts: FirecrackerVmOptions, spec?: VmSpec): StepList<FirecrackerBoot> {
  let steps = DEFAULT_STEPS;
  if (opts.configFile && opts.snapshotLoad)
    throw new KindlingError("a snapshot is loaded over the API: it cannot be combined with --config-file");
  if (opts.configFile) steps = withConfigFile(steps);
  if (opts.snapshotLoad) steps = withSnapshotLoad(steps, opts.snapshotLoad);
  if (spec?.network) steps = withNetworkNamespace(steps, spec.network.netns);
  if (opts.jailer) steps = withJailer(steps, opts.jailer);
  return steps;
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
