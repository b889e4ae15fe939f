/**
 * The service with Firecracker VMs: the real service and supervisors, the Firecracker test double
 * (test/helpers/fake-firecracker.ts: every API body checked against the v1.16.1 schema) as the VMM, and
 * the guest agent played by this test (agent protocol 4). `run -d --runtime firecracker`, logs, exec
 * (output, stdin, status, a missing program), kill -9 of the service while the VM runs, adoption by a
 * new service, stop, rm; `-t` for an attached run and for exec (START's pty flag and size, RESIZE);
 * nothing left behind.
 */
import assert from "node:assert/strict";
import { readFile, rm } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { PassThrough, Writable } from "node:stream";
import { after, before, test } from "node:test";
import { Kindling } from "../src/client/index.js";
import {
  decodeStart,
  encodeFrame,
  FrameDecoder,
  MsgType,
  PayloadReader,
  PayloadWriter,
  PROTOCOL_VERSION,
} from "../src/vm/agent/protocol.js";
import { until as untilTrue, within } from "./helpers/bounded.js";
import { type Fixture, makeFixture } from "./helpers/firecracker-fixtures.js";
import { leftovers, pidsNaming } from "./helpers/leftovers.js";
import { apiCall, cli, startService, type TestService } from "./helpers/service.js";
import { type ServiceTestHome, vmServiceHome } from "./helpers/service-home.js";
import type { VmTestHome } from "./helpers/vm-image.js";

let fx: Fixture;
let t: ServiceTestHome & { vm: VmTestHome };
let home: string;
let socket: string;
let service: TestService;
let agent: FakeAgent;

const until = (what: string, check: () => Promise<boolean>, ms = 60_000) => untilTrue(what, check, ms, 100);

/** What the VMM double and the service's supervisors (which start it) need. */
const fcEnv = () => ({
  KINDLING_FIRECRACKER: fx.fakeBin,
  FAKE_FC_GUEST_DIR: fx.guestDir,
  FAKE_FC_GUEST_CONNECT: "1024",
});

interface Started {
  args: string[];
  tty?: { rows: number; cols: number };
}

interface FakeAgent {
  /** Every START the "guests" got, in order. */
  starts: Started[];
  /** RESIZE messages, as "rows x cols". */
  resizes: string[];
  /** Guest connections open now (one per running VM). */
  open(): number;
  close(): Promise<void>;
}

const exited = (status: number, signal = 0) => new PayloadWriter().u32(status).u32(signal).done();

/**
 * The guest agent of every VM the double boots (its "guest" connects to connect_1024.sock): READY;
 * CONFIGURE/NETWORK -> CONFIGURED; POWEROFF -> the connection ends (the double's "guest" reboots, the
 * VMM exits). What a START runs depends on its first argument:
 *   tick   "tick N" every 100 ms until a signal (EXITED 128+n)
 *   shell  "tty RxC" (or "no tty"), then echoes its input, says "resized RxC" on RESIZE, exits 0 on "exit"
 *   count  reads stdin to its end, prints the byte count
 *   /no/such  FAILED: ENOENT at exec (127)
 *   else   "ran ARGS" on stdout, "to-stderr" on stderr, status 4
 */
async function fakeAgent(sock: string): Promise<FakeAgent> {
  const starts: Started[] = [];
  const resizes: string[] = [];
  const conns = new Set<net.Socket>();
  const server = net.createServer((s) => {
    conns.add(s);
    s.on("close", () => conns.delete(s));
    s.on("error", () => {});
    const dec = new FrameDecoder();
    const send = (type: number, id: number, payload: Buffer) => {
      if (!s.destroyed) s.write(encodeFrame(type, id, payload));
    };
    send(MsgType.READY, 0, new PayloadWriter().u32(PROTOCOL_VERSION).bytes("6.1.0-fake").done());
    const procs = new Map<number, { kind: string; input: Buffer[]; timer?: NodeJS.Timeout; done: boolean }>();
    const finish = (id: number, status: number, signal = 0) => {
      const p = procs.get(id);
      if (!p || p.done) return;
      p.done = true;
      clearInterval(p.timer);
      send(MsgType.EXITED, id, exited(status, signal));
    };
    s.on("close", () => {
      for (const p of procs.values()) clearInterval(p.timer);
    });
    s.on("data", (chunk: Buffer) => {
      for (const f of dec.push(chunk)) {
        const out = (text: string) => send(MsgType.STDOUT, f.id, Buffer.from(text));
        if (f.type === MsgType.CONFIGURE || f.type === MsgType.NETWORK) {
          send(MsgType.CONFIGURED, 0, new PayloadWriter().u32(0).bytes("").done());
        } else if (f.type === MsgType.START) {
          const { spec, tty } = decodeStart(f.payload);
          const args = spec.args.map(String);
          starts.push({ args, ...(tty ? { tty } : {}) });
          const kind = args[0] ?? "";
          if (kind === "/no/such") {
            send(
              MsgType.FAILED,
              f.id,
              new PayloadWriter()
                .u32(2)
                .bytes("cannot execute /no/such: No such file or directory")
                .u32(4)
                .done(),
            );
            continue;
          }
          const p = {
            kind,
            input: [] as Buffer[],
            done: false,
            timer: undefined as NodeJS.Timeout | undefined,
          };
          procs.set(f.id, p);
          send(MsgType.STARTED, f.id, new PayloadWriter().u32(100 + procs.size).done());
          if (kind === "tick") {
            let n = 0;
            p.timer = setInterval(() => out(`tick ${++n}\n`), 100);
          } else if (kind === "shell") {
            out(tty ? `tty ${tty.rows}x${tty.cols}\r\n` : "no tty\n");
          } else if (kind !== "count") {
            out(`ran ${args.join(" ")}\n`);
            send(MsgType.STDERR, f.id, Buffer.from("to-stderr\n"));
            finish(f.id, 4);
          }
        } else if (f.type === MsgType.STDIN) {
          send(MsgType.STDIN_CREDIT, f.id, new PayloadWriter().u32(f.payload.length).done());
          const p = procs.get(f.id);
          if (!p) continue;
          p.input.push(f.payload);
          if (p.kind === "shell") {
            out(f.payload.toString());
            if (Buffer.concat(p.input).toString().includes("exit")) finish(f.id, 0);
          }
        } else if (f.type === MsgType.STDIN_EOF) {
          const p = procs.get(f.id);
          if (p?.kind === "count") {
            out(`${Buffer.concat(p.input).length}\n`);
            finish(f.id, 0);
          }
        } else if (f.type === MsgType.RESIZE) {
          const r = new PayloadReader(f.payload);
          const size = `${r.u32()}x${r.u32()}`;
          resizes.push(size);
          if (procs.get(f.id)?.kind === "shell") out(`resized ${size}\r\n`);
        } else if (f.type === MsgType.SIGNAL) {
          const sig = new PayloadReader(f.payload).u32();
          finish(f.id, 128 + sig, sig);
        } else if (f.type === MsgType.POWEROFF) {
          s.end();
        }
      }
    });
  });
  await rm(sock, { force: true });
  await within(
    new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(sock, () => resolve());
    }),
    10_000,
    "the fake agent's socket",
  );
  return {
    starts,
    resizes,
    open: () => conns.size,
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of conns) c.destroy();
        server.close(() => resolve());
      }),
  };
}

before(async () => {
  fx = await makeFixture();
  t = await vmServiceHome({ service: false });
  ({ root: home, socket } = t);
  agent = await fakeAgent(path.join(fx.guestDir, "connect_1024.sock"));
  // the CLI sends KINDLING_FIRECRACKER with its settings; the double reads FAKE_FC_* from the
  // environment the supervisors inherit from the service
  Object.assign(process.env, fcEnv());
  service = t.service = await startService(home, [], fcEnv());
});

after(async () => {
  try {
    await t?.done();
  } finally {
    await agent?.close();
    for (const k of Object.keys(fcEnv())) delete process.env[k];
    await fx?.cleanup();
  }
});

async function stdoutOf(id: string): Promise<string> {
  const r = await apiCall(socket, "GET", `/v1/containers/${id}/logs`);
  return (r.body as { stream: string; data: string }[])
    .filter((l) => l.stream === "stdout")
    .map((l) => Buffer.from(l.data, "base64").toString())
    .join("");
}

/** Processes of the VMM double that serve a VM of this home (its API socket is under the run dir). */
const vmmsOfHome = () =>
  pidsNaming(`${home}/`, `${process.execPath}\0`).then(async (pids) => {
    const out: number[] = [];
    for (const p of pids) {
      const cmd = await readFile(`/proc/${p}/cmdline`, "utf8").catch(() => "");
      if (cmd.includes("fake-firecracker")) out.push(p);
    }
    return out;
  });

test("firecracker under the service: run -d, logs, exec, kill -9 of the service, adoption, stop, rm", async () => {
  const run = await cli(home, [
    "run",
    "-d",
    "--runtime",
    "firecracker",
    "--network",
    "none",
    "--name",
    "fc1",
    "ml",
    "--",
    "tick",
  ]);
  assert.equal(run.code, 0, run.stderr);
  const id = run.stdout.trim();
  t.ids.push(id);
  const inspect = await apiCall(socket, "GET", `/v1/containers/${id}`);
  assert.equal(inspect.body.runtime, "firecracker");
  assert.equal(inspect.body.state.status, "running");
  assert.ok(inspect.body.state.bootMs >= 0, "the VM's boot time is recorded");
  assert.equal((await vmmsOfHome()).length, 1, "one VMM runs the container");
  await until("output from the VM", async () => (await stdoutOf(id)).includes("tick 3\n"));

  const ex = await cli(home, ["exec", "fc1", "--", "sh", "-c", "exit 4"]);
  assert.equal(ex.code, 4, ex.stderr);
  assert.equal(ex.stdout, "ran sh -c exit 4\n");
  assert.equal(ex.stderr, "to-stderr\n");
  const exi = await cli(home, ["exec", "-i", "fc1", "--", "count"], "twelve bytes");
  assert.equal(exi.code, 0, exi.stderr);
  assert.equal(exi.stdout, "12\n");
  const missing = await cli(home, ["exec", "fc1", "--", "/no/such"]);
  assert.equal(missing.code, 127, missing.stderr);

  await service.kill9();
  const logPath = path.join(home, "containers", id, "log.jsonl");
  const before = (await readFile(logPath, "utf8")).length;
  await until(
    "log lines written while no service runs",
    async () => (await readFile(logPath, "utf8")).length > before,
  );
  service = t.service = await startService(home, [], fcEnv());
  const ps = await apiCall(socket, "GET", "/v1/containers");
  assert.deepEqual(
    (ps.body as { id: string; status: string }[]).map((c) => `${c.id} ${c.status}`),
    [`${id} running`],
  );
  const adoptedExec = await cli(home, ["exec", "fc1", "--", "echo", "adopted"]);
  assert.equal(adoptedExec.code, 4, adoptedExec.stderr);
  assert.equal(adoptedExec.stdout, "ran echo adopted\n");

  const stop = await cli(home, ["stop", "-t", "2", "fc1"]);
  assert.equal(stop.code, 0, stop.stderr);
  const wait = await apiCall(socket, "POST", `/v1/containers/${id}/wait`);
  assert.equal(wait.body.exitCode, 143, "TERM through the agent");
  const lines = (await stdoutOf(id)).split("\n").filter(Boolean);
  assert.ok(lines.length > 5, `${lines.length} lines`);
  for (const [i, l] of lines.entries())
    assert.equal(l, `tick ${i + 1}`, "every line, in order, across the restart");
  assert.deepEqual(
    agent.starts.map((s) => s.args.join(" ")),
    ["tick", "sh -c exit 4", "count", "/no/such", "echo adopted"],
  );
  const rmc = await cli(home, ["rm", "fc1"]);
  assert.equal(rmc.code, 0, rmc.stderr);
  await until("the VMM to exit", async () => (await vmmsOfHome()).length === 0, 20_000);
  await until("the guest's connection to close", async () => agent.open() === 0, 20_000);
  await service.stop();
  assert.deepEqual(await leftovers(home), []);
});

/** A sink that collects what it is given. */
function collector(): { sink: Writable; text: () => string } {
  let text = "";
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      text += chunk.toString();
      cb();
    },
  });
  return { sink, text: () => text };
}

test("firecracker -t: an attached run and an exec on a guest pty of the client's size, resized, with input", async () => {
  if (!service.child.pid || service.child.exitCode !== null)
    service = t.service = await startService(home, [], fcEnv());
  const k = new Kindling({ home, socket });
  agent.starts.length = 0;
  agent.resizes.length = 0;

  // run -t -i, attached (as `kindling run -t -i`)
  const stdin = new PassThrough();
  const out = collector();
  const session = await within(
    k.run(
      {
        image: "ml",
        runtime: "firecracker",
        network: "none",
        command: ["shell"],
        tty: true,
        ttySize: { rows: 30, cols: 100 },
        autoRemove: true,
      },
      { stdin, stdout: out.sink, stderr: out.sink },
    ),
    60_000,
    "the attached -t run",
  );
  await until("the pty's size at start", async () => out.text().includes("tty 30x100\r\n"));
  session.resize({ rows: 40, cols: 120 });
  await until("the resize in the guest", async () => out.text().includes("resized 40x120"));
  stdin.write("hello\n");
  await until("the input echoed", async () => out.text().includes("hello\n"));
  stdin.write("exit\n");
  const exit = await within(session.exit, 60_000, "the -t run's end");
  assert.equal(exit.status, 0);
  assert.deepEqual(agent.starts[0], { args: ["shell"], tty: { rows: 30, cols: 100 } });
  assert.deepEqual(agent.resizes, ["40x120"]);

  // exec -t -i into a running VM
  const c = await k.createContainer({
    image: "ml",
    runtime: "firecracker",
    network: "none",
    command: ["tick"],
  });
  t.ids.push(c.id);
  const execIn = new PassThrough();
  const execOut = collector();
  const sh = await k.execSession(
    c.id,
    { cmd: ["shell"], tty: true, ttySize: { rows: 24, cols: 80 } },
    { stdin: execIn, stdout: execOut.sink, stderr: execOut.sink },
  );
  await until("the exec's pty size", async () => execOut.text().includes("tty 24x80\r\n"));
  sh.resize({ rows: 50, cols: 132 });
  await until("the exec's resize", async () => execOut.text().includes("resized 50x132"));
  execIn.write("exit\n");
  assert.equal((await within(sh.exit, 60_000, "the exec's end")).status, 0);
  assert.deepEqual(agent.starts.at(-1), { args: ["shell"], tty: { rows: 24, cols: 80 } });
  await k.remove(c.id, { force: true });
  await until("the VMMs to exit", async () => (await vmmsOfHome()).length === 0, 20_000);
  await service.stop();
  assert.deepEqual(await leftovers(home), []);
});
