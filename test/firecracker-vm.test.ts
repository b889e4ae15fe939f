/**
 * The Firecracker backend end to end against the test double (test/helpers/fake-firecracker.ts), which
 * validates every request against the official schema. No real Firecracker runs here (see docs/firecracker.md).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readdir, readFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import type { Duplex } from "node:stream";
import { after, before, test } from "node:test";
import { KindlingError } from "../src/util/errors.js";
import { FirecrackerApi } from "../src/vm/firecracker/client.js";
import { FIRECRACKER_MISSING, findExecutable } from "../src/vm/firecracker/process.js";
import type { FirecrackerConfig } from "../src/vm/firecracker/render.js";
import { type FirecrackerVmOptions, startFirecrackerVm } from "../src/vm/firecracker/vm.js";
import { vsockConnectOnce } from "../src/vm/firecracker/vsock.js";
import { exited, firstLine, within } from "./helpers/bounded.js";
import { alive, type Fixture, makeFixture } from "./helpers/firecracker-fixtures.js";

let fx: Fixture;
const savedEnv = { ...process.env };

before(async () => {
  fx = await makeFixture();
});
after(async () => {
  process.env = savedEnv;
  await fx.cleanup();
});

/** Sets the fake's knobs for one test (env is inherited by the spawned double). */
function fakeEnv(vars: Record<string, string>): void {
  for (const k of Object.keys(process.env)) if (k.startsWith("FAKE_FC_")) delete process.env[k];
  process.env.FAKE_FC_GUEST_DIR = fx.guestDir;
  Object.assign(process.env, vars);
}

/** A Unix socket server standing in for a guest endpoint; resolves its first connection. */
async function guestEndpoint(name: string): Promise<{ conn: Promise<net.Socket>; close(): void }> {
  const server = net.createServer();
  const conn = within(
    once(server, "connection").then(([s]) => s as net.Socket),
    10_000,
    `the double's "guest" to connect to ${name}`,
  );
  server.listen(path.join(fx.guestDir, name));
  await once(server, "listening");
  return { conn, close: () => server.close() };
}

/** Reads at least n bytes, then leaves the stream paused so the next reader gets what follows. */
function readN(s: Duplex, n: number): Promise<string> {
  return within(
    new Promise<string>((resolve, reject) => {
      let got = "";
      const onData = (chunk: Buffer) => {
        got += chunk.toString();
        if (got.length < n) return;
        s.off("data", onData);
        s.off("error", reject);
        s.pause();
        resolve(got);
      };
      s.on("data", onData);
      s.once("error", reject);
      s.resume();
    }),
    10_000,
    `${n} bytes from the stream`,
  );
}

async function records(
  file: string,
): Promise<
  { method?: string; path?: string; body?: unknown; status?: number; argv?: string[]; config?: unknown }[]
> {
  return (await readFile(file, "utf8"))
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
}

async function sockets(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => f.endsWith(".sock") || f.includes(".sock_"));
}

async function specWithDrives() {
  return fx.spec({
    drives: [
      { id: "rootfs", path: await fx.drive("root"), isRoot: true, readOnly: true },
      { id: "mount-0", path: await fx.drive("m0"), isRoot: false, readOnly: true },
      { id: "scratch", path: await fx.drive("scratch"), isRoot: false, readOnly: false },
    ],
  });
}

test("API mode: the calls in order, the agent stream over guest-initiated vsock, CONNECT to a guest port, close() leaves nothing", async () => {
  const record = path.join(fx.dir, "api.jsonl");
  fakeEnv({ FAKE_FC_RECORD: record, FAKE_FC_GUEST_CONNECT: "1024" });
  const agentSide = await guestEndpoint("connect_1024.sock");
  const port52 = await guestEndpoint("listen_52.sock");
  const spec = await specWithDrives();
  const vm = await startFirecrackerVm(spec, { firecrackerBin: fx.fakeBin, id: "t1" });
  try {
    assert.ok(alive(vm.pid));
    const rec = await records(record);
    assert.deepEqual(rec[0].argv, ["--api-sock", path.join(spec.stateDir, "api.sock"), "--id", "t1"]);
    const calls = rec.filter((r) => r.method);
    assert.deepEqual(
      calls.map((r) => `${r.method} ${r.path} ${r.status}`),
      [
        "PUT /logger 204",
        "PUT /metrics 204",
        "PUT /machine-config 204",
        "PUT /boot-source 204",
        "PUT /drives/rootfs 204",
        "PUT /drives/mount_0 204",
        "PUT /drives/scratch 204",
        "PUT /vsock 204",
        "PUT /actions 204",
      ],
    );
    assert.deepEqual(calls[7].body, { guest_cid: 3, uds_path: path.join(spec.stateDir, "vsock.sock") });
    assert.deepEqual(
      vm.calls.map((c) => c.path),
      calls.map((c) => c.path),
    );
    assert.deepEqual(await vm.api.get("/"), {
      app_name: "Firecracker",
      id: "t1",
      state: "Running",
      vmm_version: "1.16.1",
    });

    // The guest's agent connects to host port 1024 -> arrives at <uds>_1024, where the backend listens.
    const agent = await vm.agentStream();
    assert.equal(await vm.agentStream(), agent, "one agent stream per VM");
    const guest = await agentSide.conn;
    guest.write("READY");
    assert.equal(await readN(agent, 5), "READY");
    agent.write("CONFIGURE");
    assert.equal(await readN(guest, 9), "CONFIGURE");

    // Host-initiated: CONNECT 52 -> OK <n>, then a byte stream to the guest's listener.
    const s52 = await vm.connect(52, 2000);
    const g52 = await port52.conn;
    s52.write("ping");
    assert.equal(await readN(g52, 4), "ping");
    g52.write("pong");
    assert.equal(await readN(s52, 4), "pong");

    assert.match(
      await readFile(vm.paths.console, "utf8"),
      /Command line: console=ttyS0 kindling.root=\/dev\/vda reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd kindling.halt=reboot/,
    );
    assert.match(await readFile(vm.paths.log, "utf8"), /Running Firecracker v1\.16\.1/);
  } finally {
    await vm.close();
    agentSide.close();
    port52.close();
  }
  assert.equal(alive(vm.pid), false, "no process left");
  assert.deepEqual(await sockets(spec.stateDir), [], "no sockets left");
  const exit = await vm.wait();
  assert.equal(exit.signal, "SIGKILL");
  await vm.close(); // idempotent
});

test("config-file mode: the file validates, firecracker boots from it, the agent still connects", async () => {
  const record = path.join(fx.dir, "cfg.jsonl");
  fakeEnv({ FAKE_FC_RECORD: record, FAKE_FC_GUEST_CONNECT: "1024" });
  const agentSide = await guestEndpoint("connect_1024.sock");
  const spec = await specWithDrives();
  const vm = await startFirecrackerVm(spec, {
    firecrackerBin: fx.fakeBin,
    configFile: true,
  });
  try {
    const written = JSON.parse(await readFile(vm.paths.configFile!, "utf8")) as FirecrackerConfig;
    assert.deepEqual(written, vm.config);
    assert.deepEqual(Object.keys(written).sort(), [
      "boot-source",
      "drives",
      "logger",
      "machine-config",
      "metrics",
      "vsock",
    ]);
    assert.deepEqual(written["machine-config"], { vcpu_count: 2, mem_size_mib: 256, smt: false });
    assert.equal(written.drives[0].drive_id, "rootfs");
    const rec = await records(record);
    assert.ok(rec[0].argv!.includes("--config-file"));
    assert.deepEqual(rec.find((r) => r.config)?.config, written, "the double read the same document");
    assert.equal(vm.calls.length, 0, "no API calls in config-file mode");
    const agent = await vm.agentStream();
    (await agentSide.conn).write("READY");
    assert.equal(await readN(agent, 5), "READY");
  } finally {
    await vm.close();
    agentSide.close();
  }
  assert.equal(alive(vm.pid), false);
});

test("a missing firecracker binary is a KindlingError that names kindling doctor, and nothing is left", async () => {
  fakeEnv({});
  const spec = fx.spec();
  process.env.KINDLING_FIRECRACKER = path.join(fx.dir, "no-such-firecracker");
  try {
    await assert.rejects(
      startFirecrackerVm(spec),
      (e: Error) => e instanceof KindlingError && e.message === FIRECRACKER_MISSING,
    );
  } finally {
    delete process.env.KINDLING_FIRECRACKER;
  }
  assert.match(FIRECRACKER_MISSING, /run `kindling doctor`/);
  await assert.rejects(readdir(spec.stateDir), /ENOENT/, "nothing was created");
});

test("a firecracker that exits before its socket appears is reported with its stderr", async () => {
  fakeEnv({ FAKE_FC_EXIT_EARLY: "1:Error opening /dev/kvm: Permission denied (os error 13)" });
  const spec = fx.spec();
  await assert.rejects(
    startFirecrackerVm(spec, { firecrackerBin: fx.fakeBin }),
    (e: Error) =>
      e instanceof KindlingError &&
      /firecracker exited with status 1: Error opening \/dev\/kvm/.test(e.message),
  );
  assert.deepEqual(await sockets(spec.stateDir), []);
});

test("a refused InstanceStart names the call and Firecracker's fault_message; the process is gone", async () => {
  const record = path.join(fx.dir, "fault.jsonl");
  fakeEnv({ FAKE_FC_RECORD: record, FAKE_FC_START_FAULT: "Cannot create VM: KVM_CREATE_VM failed" });
  const spec = await specWithDrives();
  await assert.rejects(startFirecrackerVm(spec, { firecrackerBin: fx.fakeBin }), (e: Error) =>
    /Firecracker refused PUT \/actions \(HTTP 400\): Start microvm error: Cannot create VM/.test(e.message),
  );
  const pids = (await records(record)).length;
  assert.ok(pids > 0);
  assert.deepEqual(await sockets(spec.stateDir), []);
});

test("a VMM that crashes after boot: wait() says how, agentStream() fails clearly instead of hanging", async () => {
  fakeEnv({ FAKE_FC_CRASH_AFTER_START: "139:thread 'fc_vcpu 0' panicked at src/vmm/src/vstate/vcpu.rs" });
  const vm = await startFirecrackerVm(await specWithDrives(), {
    firecrackerBin: fx.fakeBin,
    agentTimeoutMs: 20_000,
  });
  try {
    await assert.rejects(
      vm.agentStream(),
      /guest agent.*the VM stopped \(firecracker exited with status 139: thread 'fc_vcpu 0' panicked/s,
    );
    const exit = await vm.wait();
    assert.equal(exit.code, 139);
    assert.match(exit.reason, /panicked/);
    assert.match(exit.consoleTail, /Linux version/);
  } finally {
    await vm.close();
  }
});

test("shutdown(): SendCtrlAltDel ends a guest that reboots; a guest that ignores it is killed after the grace period", async () => {
  fakeEnv({});
  const vm = await startFirecrackerVm(fx.spec(), { firecrackerBin: fx.fakeBin });
  const exit = await vm.shutdown(5000);
  assert.deepEqual([exit.code, exit.signal], [0, null]);
  assert.deepEqual(vm.calls.at(-1), {
    method: "PUT",
    path: "/actions",
    body: { action_type: "SendCtrlAltDel" },
  });
  await vm.close();

  fakeEnv({ FAKE_FC_IGNORE_CAD: "1" });
  const stubborn = await startFirecrackerVm(fx.spec(), { firecrackerBin: fx.fakeBin });
  const t0 = Date.now();
  const exit2 = await stubborn.shutdown(300);
  assert.equal(exit2.signal, "SIGKILL");
  assert.ok(Date.now() - t0 >= 300);
  await stubborn.close();
  assert.equal(alive(stubborn.pid), false);
});

test("hybrid vsock: CONNECT to a port nothing listens on is closed by Firecracker, and reported", async () => {
  fakeEnv({});
  const vm = await startFirecrackerVm(fx.spec(), { firecrackerBin: fx.fakeBin });
  try {
    await assert.rejects(
      vsockConnectOnce(vm.paths.vsockSocket, 4242, 2000),
      /CONNECT 4242 .*closed without a reply/,
    );
    await assert.rejects(
      vm.connect(4242, 400),
      /did not accept a vsock connection on port 4242 within 400 ms/,
    );
  } finally {
    await vm.close();
  }
});

test("the double answers an invalid body with 400 and a fault_message naming the field", async () => {
  fakeEnv({});
  const vm = await startFirecrackerVm(fx.spec(), { firecrackerBin: fx.fakeBin });
  try {
    const raw = new FirecrackerApi(vm.paths.apiSocket);
    const res = await raw.request("PUT", "/machine-config", { vcpu_count: "two", mem_size_mib: 128 });
    assert.equal(res.status, 400);
    assert.match(
      (res.body as { fault_message: string }).fault_message,
      /vcpu_count is not of a type\(s\) integer/,
    );
    const after = await raw.request("PUT", "/drives/x", {
      drive_id: "x",
      path_on_host: fx.kernel,
      is_root_device: false,
      is_read_only: true,
    });
    assert.match((after.body as { fault_message: string }).fault_message, /not supported after starting/);
  } finally {
    await vm.close();
  }
});

test("options that cannot work are refused up front", async () => {
  fakeEnv({});
  const opts: FirecrackerVmOptions = { firecrackerBin: fx.fakeBin };
  await assert.rejects(
    startFirecrackerVm(fx.spec({ shares: [{ tag: "x", source: "/" }] }), opts),
    /virtio-fs/,
  );
  const long = fx.spec({ stateDir: path.join(fx.dir, "x".repeat(120)) });
  await assert.rejects(startFirecrackerVm(long, opts), /longer than 107 bytes/);
});

test("jailer mode without a jailer binary: a clear error before anything is prepared", async () => {
  fakeEnv({});
  const base = path.join(fx.dir, "jails");
  const spec = await specWithDrives();
  const old = process.env.KINDLING_JAILER;
  process.env.KINDLING_JAILER = path.join(fx.dir, "no-such-jailer");
  try {
    await assert.rejects(
      startFirecrackerVm(spec, {
        firecrackerBin: fx.fakeBin,
        id: "jailed-1",
        jailer: { execFile: fx.fakeBin, uid: 4321, gid: 4321, chrootBaseDir: base },
      }),
      /jailer is not installed or not on PATH \(set KINDLING_JAILER\); run `kindling doctor`/,
    );
  } finally {
    if (old === undefined) delete process.env.KINDLING_JAILER;
    else process.env.KINDLING_JAILER = old;
  }
  await assert.rejects(readdir(path.join(base, "firecracker", "jailed-1")), /ENOENT/);
});

test("the VMM dies with Node even when Node is SIGKILLed (parent-death signal)", async (t) => {
  if (!(await findExecutable("setpriv"))) return t.skip("no setpriv (util-linux)");
  fakeEnv({});
  const spec = fx.spec();
  const vmModule = new URL("../src/vm/firecracker/vm.js", import.meta.url).href;
  const script = `
    const { startFirecrackerVm } = await import(${JSON.stringify(vmModule)});
    const vm = await startFirecrackerVm(${JSON.stringify(spec)}, { firecrackerBin: ${JSON.stringify(fx.fakeBin)} });
    process.stdout.write(vm.pid + "\\n");
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const pid = Number((await firstLine(child, 20_000, "the child's VMM pid")).trim());
  assert.ok(alive(pid), "the VMM runs");
  child.kill("SIGKILL");
  await exited(child, 10_000, "the killed child to exit");
  for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(alive(pid), false, "the VMM is gone with its parent");
});
