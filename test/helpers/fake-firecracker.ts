/**
 * A test double for the firecracker binary: the only fake Kindling's tests use, because Firecracker
 * cannot run on the development host (no binary, and /dev/kvm there is PVM). It behaves like
 * firecracker v1.16.1 where Kindling depends on it:
 * - parses firecracker's flags (--api-sock, --id, --config-file, --version, ...), rejects unknown ones;
 * - serves the API on the Unix socket and validates every body against the official schema
 *   (firecracker-v1.16.1.yaml) through its own reader and validator (fc-api-rules.ts: `yaml` + `jsonschema`,
 *   independent of the ajv path Kindling's tests use), answering 400 {"fault_message": ...} as Firecracker
 *   does, plus the checks Firecracker makes beyond the schema (docs/firecracker.md lists each with its
 *   source: ids, path/body id match, vCPU and memory ranges, one root device, files exist, pre-boot only,
 *   the vsock socket bound at PUT /vsock);
 * - on InstanceStart (or right away with --config-file) it "boots": prints console lines, and implements
 *   the hybrid vsock host side: listens on uds_path, answers "CONNECT <port>\n" with "OK <n>\n";
 * - guest-side endpoints are Unix sockets the test controls, in $FAKE_FC_GUEST_DIR:
 *     host-initiated CONNECT <p> is bridged to <dir>/listen_<p>.sock (closed if nothing listens there);
 *     for each port in $FAKE_FC_GUEST_CONNECT the "guest" connects to <uds_path>_<p> and bridges it to
 *     <dir>/connect_<p>.sock; when that connection ends, the "guest" reboots (the process exits 0), as
 *     the guest init powers off when its agent channel closes;
 * - SendCtrlAltDel makes the "guest" reboot, so the process exits 0 (unless $FAKE_FC_IGNORE_CAD=1).
 * - snapshots: PATCH /vm pauses and resumes; PUT /snapshot/create (paused only) writes the state (the
 *   configured resources, as JSON) and a memory file; PUT /snapshot/load (on a fresh process only, files
 *   must exist, exactly one of mem_file_path and mem_backend) restores them with the vsock and TAP
 *   overrides, paused unless resume_vm; PATCH /drives/{id} (post-boot, a known drive, the file exists)
 *   swaps a drive's file; the first resume of a loaded VM starts its "guest" as InstanceStart does.
 * Failure modes for tests: $FAKE_FC_EXIT_EARLY="code:message" (exit before the socket exists),
 * $FAKE_FC_START_FAULT="message" (InstanceStart answers 400), $FAKE_FC_CRASH_AFTER_START="code:message".
 * Every request is appended as a JSON line to $FAKE_FC_RECORD when set.
 * Run without arguments (as `node --test dist/test/` does with every file under test/) it does nothing.
 */
import { appendFileSync, existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import {
  checkBootSource,
  checkDrive,
  checkInstanceId,
  checkMachineConfig,
  checkNetworkInterface,
  checkPathId,
  DoubleApi,
  doubleSchemaFile,
} from "./fc-api-rules.js";

const VERSION = "1.16.1";

// Flags of firecracker v1.16.1 (`firecracker --help`): those that take a value, and switches.
const VALUE_FLAGS = new Set([
  "--api-sock",
  "--id",
  "--config-file",
  "--level",
  "--log-path",
  "--module",
  "--metrics-path",
  "--seccomp-filter",
  "--start-time-us",
  "--start-time-cpu-us",
  "--parent-cpu-time-us",
  "--http-api-max-payload-size",
  "--mmds-size-limit",
  "--metadata",
  "--describe-snapshot",
]);
const SWITCHES = new Set([
  "--no-api",
  "--no-seccomp",
  "--boot-timer",
  "--show-level",
  "--show-log-origin",
  "--enable-pci",
  "--version",
  "--snapshot-version",
  "--help",
]);

function parseArgs(argv: string[]): Map<string, string | true> {
  const out = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (VALUE_FLAGS.has(a)) {
      if (i + 1 >= argv.length) die(1, `Arguments parsing error: Argument ${a.slice(2)} requires a value.`);
      out.set(a, argv[++i]);
    } else if (SWITCHES.has(a)) out.set(a, true);
    else
      die(
        1,
        `Arguments parsing error: Found argument '${a}' which wasn't expected, or isn't valid in this context.`,
      );
  }
  return out;
}

function die(code: number, message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(code);
}

type Body = Record<string, unknown>;

interface State {
  started: boolean;
  /** PATCH /vm Paused, or loaded without resume_vm */
  paused?: boolean;
  /** restored by PUT /snapshot/load: its guest starts on the first resume */
  loaded?: boolean;
  guestRunning?: boolean;
  bootSource?: Body;
  machine?: Body;
  drives: Map<string, Body>;
  vsock?: Body;
  /** the hybrid vsock's host socket, bound at PUT /vsock as Firecracker does */
  vsockServer?: net.Server;
  ifaces: Map<string, Body>;
  logger?: Body;
  metrics?: Body;
}

const argv = process.argv.slice(2);
if (argv.length > 0) await main(parseArgs(argv));

async function main(flags: Map<string, string | true>): Promise<void> {
  if (flags.has("--version")) {
    process.stdout.write(`Firecracker v${VERSION}\n`);
    return;
  }
  const early = process.env.FAKE_FC_EXIT_EARLY;
  if (early) {
    const [code, ...msg] = early.split(":");
    die(Number(code), msg.join(":"));
  }
  let schema: DoubleApi;
  try {
    const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
    schema = new DoubleApi(doubleSchemaFile(repoRoot));
  } catch (err) {
    die(1, `fake firecracker: ${(err as Error).message}`);
  }
  const id = (flags.get("--id") as string | undefined) ?? "anonymous-instance";
  const idError = checkInstanceId(id);
  if (idError) die(1, idError);
  const apiSock = (flags.get("--api-sock") as string | undefined) ?? "/run/firecracker.socket";
  const record = (entry: unknown) => {
    if (process.env.FAKE_FC_RECORD) appendFileSync(process.env.FAKE_FC_RECORD, `${JSON.stringify(entry)}\n`);
  };
  record({ argv });
  const state: State = { started: false, drives: new Map(), ifaces: new Map() };
  const cleanups: (() => void)[] = [];

  const fault = (status: number, message: string) => ({ status, body: { fault_message: message } });

  /** One request, as Firecracker's API server handles it: schema, then its own checks, then the effect. */
  const handle = (method: string, url: string, body: unknown): { status: number; body?: unknown } => {
    if (method === "GET") {
      if (url === "/")
        return {
          status: 200,
          body: {
            app_name: "Firecracker",
            id,
            state: state.started ? "Running" : "Not started",
            vmm_version: VERSION,
          },
        };
      if (url === "/version") return { status: 200, body: { firecracker_version: VERSION } };
      if (url === "/machine-config")
        return { status: 200, body: state.machine ?? { vcpu_count: 1, mem_size_mib: 128, smt: false } };
      if (url === "/vm/config") return { status: 200, body: fullConfig(state) };
      return fault(400, `Invalid request method and/or path: ${method} ${url}.`);
    }
    if (body === undefined && method === "PUT") return fault(400, "Empty request body.");
    const definition = schema.definitionFor(method, url);
    if (!definition) return fault(400, `Invalid request method and/or path: ${method} ${url}.`);
    const errors = schema.check(definition, body);
    if (errors.length > 0) {
      // Firecracker reports serde's deserialization error; ours names the same field.
      return fault(
        400,
        `An error occurred when deserializing the json body of a request: ${errors.join("; ")}`,
      );
    }
    const b = body as Body;
    if (method === "PUT" && url === "/actions") return action(b.action_type as string);
    const post = postBoot(method, url, b);
    if (post) return post;
    if (method === "PUT" && url === "/snapshot/load") return loadSnapshot(b);
    if (state.started)
      return fault(400, "The requested operation is not supported after starting the microVM.");
    if (method === "PUT" && url.startsWith("/drives/")) {
      const pathId = decodeURIComponent(url.slice("/drives/".length));
      const err = checkPathId(pathId, b.drive_id) ?? checkDrive(b, state.drives);
      return err ? fault(400, err) : ok(() => state.drives.set(pathId, b));
    }
    if (method === "PUT" && url.startsWith("/network-interfaces/")) {
      const pathId = decodeURIComponent(url.slice("/network-interfaces/".length));
      const err = checkPathId(pathId, b.iface_id) ?? checkNetworkInterface(b, state.ifaces);
      return err ? fault(400, err) : ok(() => state.ifaces.set(pathId, b));
    }
    switch (url) {
      case "/boot-source": {
        const err = checkBootSource(b);
        return err ? fault(400, err) : ok(() => (state.bootSource = b));
      }
      case "/machine-config": {
        const err = checkMachineConfig(b);
        return err ? fault(400, err) : ok(() => (state.machine = b));
      }
      case "/vsock": {
        // src/vmm/src/vmm_config/vsock.rs: VsockUnixBackend::new binds uds_path now, not at boot; a
        // second PUT removes the old socket first.
        if (state.vsockServer) {
          state.vsockServer.close();
          rmSync(state.vsock?.uds_path as string, { force: true });
        }
        if (existsSync(b.uds_path as string))
          return fault(400, "Cannot create backend for vsock device: UnixBind(Address in use (os error 98))");
        state.vsockServer = bindVsock(b.uds_path as string);
        return ok(() => (state.vsock = b));
      }
      case "/logger":
        if (state.logger) return fault(400, "Reinitialization of logger not allowed.");
        if (!existsSync(b.log_path as string))
          return fault(400, `Failed to open target file: No such file or directory (os error 2)`);
        appendFileSync(
          b.log_path as string,
          `${new Date().toISOString()} [${id}:main] Running Firecracker v${VERSION} (test double)\n`,
        );
        return ok(() => (state.logger = b));
      case "/metrics":
        if (!existsSync(b.metrics_path as string))
          return fault(400, `Failed to open target file: No such file or directory (os error 2)`);
        return ok(() => (state.metrics = b));
      default:
        return fault(400, `The test double does not implement ${method} ${url}`);
    }
  };

  const notStarted = () =>
    fault(400, "The requested operation is not supported before starting the microVM.");

  /** Post-boot calls (vmm/src/rpc_interface.rs: only in the running or paused state). */
  const postBoot = (method: string, url: string, b: Body): { status: number; body?: unknown } | undefined => {
    if (method === "PATCH" && url === "/vm") {
      if (!state.started) return notStarted();
      return ok(() => {
        state.paused = b.state === "Paused";
        if (!state.paused && !state.guestRunning) startGuest();
      });
    }
    if (method === "PATCH" && url.startsWith("/drives/")) {
      if (!state.started) return notStarted();
      const pathId = decodeURIComponent(url.slice("/drives/".length));
      const err = checkPathId(pathId, b.drive_id);
      if (err) return fault(400, err);
      const drive = state.drives.get(pathId);
      if (!drive) return fault(400, `Unable to patch the block device: Invalid block device ID: ${pathId}`);
      if (typeof b.path_on_host === "string" && !existsSync(b.path_on_host))
        return fault(400, `Unable to patch the block device: Invalid block device path: ${b.path_on_host}`);
      return ok(() => state.drives.set(pathId, { ...drive, ...b }));
    }
    if (method === "PUT" && url === "/snapshot/create") {
      if (!state.started) return notStarted();
      // vmm/src/lib.rs: a snapshot is only taken of a paused microVM
      if (!state.paused) return fault(400, "Create snapshot error: the microVM must be paused");
      for (const f of [b.snapshot_path, b.mem_file_path] as string[]) {
        if (!existsSync(path.dirname(f)))
          return fault(
            400,
            `Create snapshot error: Cannot open ${f}: No such file or directory (os error 2)`,
          );
      }
      return ok(() => {
        writeFileSync(b.mem_file_path as string, Buffer.alloc(4096));
        writeFileSync(
          b.snapshot_path as string,
          JSON.stringify({
            bootSource: state.bootSource,
            machine: state.machine,
            drives: [...state.drives.values()],
            ifaces: [...state.ifaces.values()],
            vsock: state.vsock,
          }),
        );
      });
    }
    return undefined;
  };

  /** vmm/src/rpc_interface.rs load_snapshot: a fresh process only; the memory in exactly one way. */
  const loadSnapshot = (b: Body): { status: number; body?: unknown } => {
    if (
      state.started ||
      state.bootSource ||
      state.machine ||
      state.drives.size ||
      state.vsock ||
      state.ifaces.size
    )
      return fault(400, "Loading a microVM snapshot not allowed after configuring boot-specific resources.");
    const mem = (b.mem_backend as Body | undefined)?.backend_path ?? b.mem_file_path;
    if ((b.mem_backend === undefined) === (b.mem_file_path === undefined))
      return fault(400, "Load snapshot error: exactly one of mem_backend and mem_file_path must be given");
    for (const f of [b.snapshot_path, mem] as string[]) {
      if (!existsSync(f))
        return fault(400, `Load snapshot error: Cannot open ${f}: No such file or directory (os error 2)`);
    }
    const saved = JSON.parse(readFileSync(b.snapshot_path as string, "utf8")) as {
      bootSource?: Body;
      machine?: Body;
      drives: Body[];
      ifaces: Body[];
      vsock?: Body;
    };
    const ifaces = new Map(saved.ifaces.map((n) => [n.iface_id as string, n]));
    for (const o of (b.network_overrides as Body[] | undefined) ?? []) {
      const n = ifaces.get(o.iface_id as string);
      if (!n) return fault(400, `Load snapshot error: invalid network override: no interface ${o.iface_id}`);
      ifaces.set(o.iface_id as string, { ...n, host_dev_name: o.host_dev_name });
    }
    const vsock = saved.vsock && {
      ...saved.vsock,
      ...((b.vsock_override as Body | undefined) ? { uds_path: (b.vsock_override as Body).uds_path } : {}),
    };
    if (vsock) {
      if (existsSync(vsock.uds_path as string))
        return fault(
          400,
          "Load snapshot error: Cannot create backend for vsock device: UnixBind(Address in use (os error 98))",
        );
      state.vsockServer = bindVsock(vsock.uds_path as string);
    }
    state.bootSource = saved.bootSource;
    state.machine = saved.machine;
    for (const d of saved.drives) state.drives.set(d.drive_id as string, d);
    state.ifaces = ifaces;
    state.vsock = vsock;
    state.started = true;
    state.loaded = true;
    state.paused = b.resume_vm !== true;
    if (!state.paused) startGuest();
    return { status: 204 };
  };

  const action = (type: string): { status: number; body?: unknown } => {
    if (type === "FlushMetrics") {
      if (!state.metrics) return fault(400, "The metrics system is not initialized.");
      appendFileSync(
        state.metrics.metrics_path as string,
        `${JSON.stringify({ utc_timestamp_ms: Date.now() })}\n`,
      );
      return { status: 204 };
    }
    if (type === "SendCtrlAltDel") {
      if (!state.started)
        return fault(400, "The requested operation is not supported before starting the microVM.");
      if (process.env.FAKE_FC_IGNORE_CAD !== "1") setTimeout(() => reboot(), 50);
      return { status: 204 };
    }
    if (state.started)
      return fault(400, "The requested operation is not supported after starting the microVM.");
    if (!state.bootSource)
      return fault(400, "Start microvm error: Cannot start microvm without kernel configuration.");
    const startFault = process.env.FAKE_FC_START_FAULT;
    if (startFault) return fault(400, `Start microvm error: ${startFault}`);
    boot();
    return { status: 204 };
  };

  const boot = () => {
    state.started = true;
    process.stdout.write(`[    0.000000] Linux version 6.1.0 (fake guest of the Firecracker test double)\n`);
    process.stdout.write(`[    0.000001] Command line: ${state.bootSource?.boot_args ?? ""}\n`);
    startGuest();
  };

  /** The "guest" runs: its agent connects (at InstanceStart, or at a loaded VM's first resume). */
  const startGuest = () => {
    state.guestRunning = true;
    if (state.loaded) process.stdout.write("[    0.000002] restored from a snapshot (test double)\n");
    if (state.vsock) startGuestConnections(state.vsock.uds_path as string);
    const crash = process.env.FAKE_FC_CRASH_AFTER_START;
    if (crash) {
      const [code, ...msg] = crash.split(":");
      setTimeout(() => die(Number(code), msg.join(":")), 100);
    }
  };

  const reboot = () => {
    process.stdout.write("reboot: Restarting system\n");
    for (const c of cleanups) c();
    process.exit(0);
  };

  /** The host side of hybrid vsock, with the guest side played by sockets in $FAKE_FC_GUEST_DIR. */
  const bindVsock = (uds: string): net.Server => {
    const guestDir = process.env.FAKE_FC_GUEST_DIR ?? "";
    let nextHostPort = 1 << 30;
    const server = net.createServer((host) => {
      let buf = "";
      const onData = (d: Buffer) => {
        buf += d.toString("latin1");
        const nl = buf.indexOf("\n");
        if (nl < 0) return;
        host.off("data", onData);
        host.pause();
        const m = /^CONNECT (\d+)$/.exec(buf.slice(0, nl));
        if (!m) return void host.destroy();
        // before boot there is no guest: the connection just closes
        if (!state.started) return void host.destroy();
        const guest = net.connect(`${guestDir}/listen_${m[1]}.sock`);
        guest.once("error", () => host.destroy()); // nothing listens on that port: Firecracker just closes
        guest.once("connect", () => {
          host.write(`OK ${nextHostPort++}\n`);
          const rest = Buffer.from(buf.slice(nl + 1), "latin1");
          if (rest.length > 0) guest.write(rest);
          bridge(host, guest);
        });
      };
      host.on("data", onData);
      host.on("error", () => {});
    });
    server.listen(uds);
    cleanups.push(() => rmSync(uds, { force: true }));
    return server;
  };

  const startGuestConnections = (uds: string) => {
    const guestDir = process.env.FAKE_FC_GUEST_DIR ?? "";
    for (const port of (process.env.FAKE_FC_GUEST_CONNECT ?? "").split(",").filter(Boolean)) {
      // docs/guest.md: the init powers the VM off when its agent channel closes; here that is a reboot.
      connectFromGuest(`${uds}_${port}`, `${guestDir}/connect_${port}.sock`, () => setTimeout(reboot, 20));
    }
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString();
      let body: unknown;
      let result: { status: number; body?: unknown };
      try {
        body = text ? JSON.parse(text) : undefined;
        result = handle(req.method ?? "GET", req.url ?? "/", body);
      } catch (err) {
        result = fault(
          400,
          `An error occurred when deserializing the json body of a request: ${(err as Error).message}`,
        );
      }
      record({ method: req.method, path: req.url, body, status: result.status });
      res.writeHead(result.status, result.body ? { "Content-Type": "application/json" } : {});
      res.end(result.body ? JSON.stringify(result.body) : undefined);
    });
  });
  if (existsSync(apiSock))
    die(1, `Failed to open the API socket at: ${apiSock}. Check that it is not already used.`);

  const configFile = flags.get("--config-file");
  if (typeof configFile === "string") {
    const config = JSON.parse(readFileSync(configFile, "utf8")) as Body;
    const errors = schema.check("FullVmConfiguration", config);
    if (errors.length > 0) die(1, `Configuration for VMM from one single json failed: ${errors.join("; ")}`);
    for (const [key, def] of [
      ["boot-source", "BootSource"],
      ["machine-config", "MachineConfiguration"],
      ["vsock", "Vsock"],
      ["logger", "Logger"],
      ["metrics", "Metrics"],
    ]) {
      if (config[key] === undefined) continue;
      const r = handle("PUT", `/${key}`, config[key]);
      if (r.status >= 300)
        die(
          1,
          `Configuration for VMM from one single json failed: ${def}: ${(r.body as { fault_message: string }).fault_message}`,
        );
    }
    for (const d of (config.drives as Body[] | undefined) ?? []) {
      const r = handle("PUT", `/drives/${d.drive_id as string}`, d);
      if (r.status >= 300)
        die(
          1,
          `Configuration for VMM from one single json failed: Drive: ${(r.body as { fault_message: string }).fault_message}`,
        );
    }
    for (const n of (config["network-interfaces"] as Body[] | undefined) ?? []) {
      const r = handle("PUT", `/network-interfaces/${n.iface_id as string}`, n);
      if (r.status >= 300)
        die(
          1,
          `Configuration for VMM from one single json failed: NetworkInterface: ${(r.body as { fault_message: string }).fault_message}`,
        );
    }
    writeFileSync(`${configFile}.seen`, "");
    record({ config });
  }
  if (!flags.has("--no-api")) await new Promise<void>((resolve) => server.listen(apiSock, resolve));
  if (typeof configFile === "string") {
    const r = action("InstanceStart");
    if (r.status >= 300) die(1, (r.body as { fault_message: string }).fault_message);
  }
}

function ok(effect: () => unknown): { status: number } {
  effect();
  return { status: 204 };
}

function fullConfig(state: State): Body {
  // Root first, then the others in insertion order: the order the guest sees them.
  const drives = [...state.drives.values()];
  return {
    "boot-source": state.bootSource,
    "machine-config": state.machine,
    drives: [...drives.filter((d) => d.is_root_device), ...drives.filter((d) => !d.is_root_device)],
    vsock: state.vsock,
  };
}

function bridge(a: net.Socket, b: net.Socket): void {
  a.pipe(b);
  b.pipe(a);
  a.on("error", () => b.destroy());
  b.on("error", () => a.destroy());
  a.on("close", () => b.destroy());
  b.on("close", () => a.destroy());
}

/** A guest-initiated connection: Firecracker connects to <uds>_<port>; retried while the host is not listening. */
function connectFromGuest(hostPath: string, guestPath: string, onEnd: () => void, attempt = 0): void {
  const host = net.connect(hostPath);
  const retry = () => {
    if (attempt < 50) setTimeout(() => connectFromGuest(hostPath, guestPath, onEnd, attempt + 1), 100);
  };
  host.once("error", retry);
  host.once("connect", () => {
    host.off("error", retry);
    const guest = net.connect(guestPath);
    guest.once("error", () => host.destroy());
    guest.once("connect", () => {
      bridge(host, guest);
      guest.once("close", onEnd);
    });
  });
}
