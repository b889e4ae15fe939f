/**
 * The Firecracker Vmm (boot -> BootedVm) against the test double, with the guest agent played by this test
 * over the agent wire format (docs/guest.md): the whole host path a `kindling run --runtime firecracker`
 * takes, minus a real VMM and guest.
 */
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { PassThrough } from "node:stream";
import { after, before, test } from "node:test";
import {
  decodeStart,
  encodeFrame,
  FrameDecoder,
  MsgType,
  PayloadWriter,
  PROTOCOL_VERSION,
} from "../src/vm/agent/protocol.js";
import { bootFirecrackerVm, FirecrackerVmm } from "../src/vm/firecracker/backend.js";
import { alive, type Fixture, makeFixture } from "./helpers/firecracker-fixtures.js";

let fx: Fixture;
before(async () => {
  fx = await makeFixture();
  process.env.FAKE_FC_GUEST_DIR = fx.guestDir;
  process.env.FAKE_FC_GUEST_CONNECT = "1024";
});
after(async () => {
  delete process.env.FAKE_FC_GUEST_DIR;
  delete process.env.FAKE_FC_GUEST_CONNECT;
  await fx.cleanup();
});

interface GuestLog {
  frames: { type: number; id: number }[];
  started: string[][];
}

/**
 * A guest agent: READY, then for START echoes its args on STDOUT and exits with the number in
 * argv[1]; closes the channel on POWEROFF (the real init then powers off; the double then exits).
 */
async function fakeAgent(opts: { ready?: boolean } = {}): Promise<{ log: GuestLog; close(): void }> {
  const log: GuestLog = { frames: [], started: [] };
  const server = net.createServer((s) => {
    const dec = new FrameDecoder();
    if (opts.ready !== false) {
      s.write(
        encodeFrame(MsgType.READY, 0, new PayloadWriter().u32(PROTOCOL_VERSION).bytes("6.1.0-test").done()),
      );
    }
    s.on("data", (chunk: Buffer) => {
      for (const f of dec.push(chunk)) {
        log.frames.push({ type: f.type, id: f.id });
        if (f.type === MsgType.START) {
          const args = decodeStart(f.payload).spec.args.map(String);
          log.started.push(args);
          s.write(encodeFrame(MsgType.STARTED, f.id, new PayloadWriter().u32(42).done()));
          s.write(encodeFrame(MsgType.STDOUT, f.id, Buffer.from(`${args.join(" ")}\n`)));
          s.write(encodeFrame(MsgType.EXITED, f.id, new PayloadWriter().u32(Number(args[1])).u32(0).done()));
        } else if (f.type === MsgType.POWEROFF) {
          s.end();
        }
      }
    });
    s.on("error", () => {});
  });
  server.listen(path.join(fx.guestDir, "connect_1024.sock"));
  await new Promise((r) => server.once("listening", r));
  return { log, close: () => server.close() };
}

test("FirecrackerVmm: boot to READY, run a process, stream its output, power off; nothing left", async () => {
  const guest = await fakeAgent();
  const stdout = new PassThrough();
  let out = "";
  stdout.on("data", (d) => {
    out += d;
  });
  const spec = fx.spec({
    drives: [{ id: "rootfs", path: await fx.drive("r"), isRoot: true, readOnly: true }],
  });
  let pid = 0;
  try {
    const vmm = new FirecrackerVmm({
      firecrackerBin: fx.fakeBin,
      bootTimeoutMs: 10_000,
    });
    const vm = await vmm.boot(spec);
    try {
      pid = vm.pid;
      assert.equal(vm.vmm, "firecracker");
      assert.ok(vm.bootMs > 0);
      const proc = await vm.agent.start({ args: ["exit", "7"], env: ["PATH=/bin"] }, { stdout });
      assert.equal((await proc.exited).status, 7);
    } finally {
      await vm.close();
    }
  } finally {
    guest.close();
  }
  assert.equal(out, "exit 7\n");
  assert.deepEqual(guest.log.started, [["exit", "7"]]);
  assert.equal(guest.log.frames.at(-1)?.type, MsgType.POWEROFF, "the host powered the guest off");
  assert.ok(pid > 0);
  assert.equal(alive(pid), false);
  assert.deepEqual(
    (await readdir(spec.stateDir)).filter((f) => f.includes(".sock")),
    [],
  );
});

test("bootFirecrackerVm: a guest that never says READY fails with the console's last lines, and nothing is left", async () => {
  const guest = await fakeAgent({ ready: false });
  const spec = fx.spec();
  try {
    await assert.rejects(
      bootFirecrackerVm(spec, { firecrackerBin: fx.fakeBin, bootTimeoutMs: 800 }),
      /VM failed to boot: no agent READY within 800 ms\n--- last console lines .*\n.*Linux version/s,
    );
  } finally {
    guest.close();
  }
  assert.deepEqual(
    (await readdir(spec.stateDir)).filter((f) => f.includes(".sock")),
    [],
  );
});

test("bootFirecrackerVm: a VMM that dies during boot is reported with its stderr", async () => {
  process.env.FAKE_FC_CRASH_AFTER_START = "1:Failed to run vcpu: KVM_RUN: Bad address (os error 14)";
  try {
    await assert.rejects(
      bootFirecrackerVm(fx.spec(), { firecrackerBin: fx.fakeBin, bootTimeoutMs: 10_000 }),
      /VM failed to boot: .*firecracker exited with status 1: Failed to run vcpu/s,
    );
  } finally {
    delete process.env.FAKE_FC_CRASH_AFTER_START;
  }
});
