/**
 * The vsock agent channel for real: QEMU with vhost-user-vsock-device backed by rust-vmm's
 * vhost-device-vsock, which is Firecracker's hybrid vsock on the host side. The guest's init connects to
 * CID 2 port 1024 through vmw_vsock_virtio_transport, and the host side is the same code Kindling uses for
 * Firecracker (VsockListener on <uds>_1024, CONNECT <port> for host-initiated streams).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readdir, readlink, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { prepareGuestBoot } from "../src/vm/kernel.js";
import { bootQemuVm, type QemuVm, VHOST_VSOCK } from "../src/vm/qemu.js";
import type { VmSpec } from "../src/vm/spec.js";
import { within } from "./helpers/bounded.js";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const home = new KindlingHome(path.join(repo, ".cache", "vm-test-home")).ensure();
let tmp: string;
let spec: (name: string, extra?: string[]) => Promise<VmSpec>;

function sink(): Writable & { data: () => Buffer } {
  const chunks: Buffer[] = [];
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      cb();
    },
  }) as Writable & { data: () => Buffer };
  w.data = () => Buffer.concat(chunks);
  return w;
}

async function busyboxRoot(dir: string): Promise<string> {
  const root = path.join(dir, "rootfs");
  for (const d of ["bin", "etc", "tmp", "proc", "sys", "dev", "root"])
    await mkdir(path.join(root, d), { recursive: true });
  await copyFile("/bin/busybox", path.join(root, "bin", "busybox"));
  const { stdout } = await exec("/bin/busybox", ["--list"]);
  for (const applet of stdout.split("\n").filter((a) => a && a !== "busybox"))
    await symlink("busybox", path.join(root, "bin", applet));
  await writeFile(path.join(root, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  const image = path.join(dir, "root.sqfs");
  await exec("mksquashfs", [root, image, "-noappend", "-quiet", "-comp", "zstd"]);
  return image;
}

/** Processes named `what` that belong to this test: tmp in their arguments or their working directory. */
async function pidsMatching(what: string): Promise<number[]> {
  const { stdout } = await exec("ps", ["-eo", "pid=,args="]);
  const out: number[] = [];
  for (const l of stdout.split("\n").filter((l) => l.includes(what))) {
    const pid = Number.parseInt(l.trim(), 10);
    const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => "");
    if (l.includes(tmp) || cwd.startsWith(tmp)) out.push(pid);
  }
  return out;
}

before(async () => {
  assert.ok(
    (await exec("sh", ["-c", `command -v ${VHOST_VSOCK}`], { allowFailure: true })).code === 0,
    `${VHOST_VSOCK} is not on PATH: scripts/setup.sh builds it with cargo`,
  );
  // short: <state>/vsock-<tag>.sock_1024 must fit in sun_path
  tmp = await mkdtemp("/tmp/kvs-");
  const root = await busyboxRoot(tmp);
  spec = async (name, extra = []) => {
    const boot = await prepareGuestBoot(home, {
      boot: { tmpfsSize: "64m", agent: "vsock", agentPort: 1024, extra },
    });
    return {
      ...boot,
      memoryMiB: 256,
      vcpus: 1,
      drives: [{ id: "root", path: root, readOnly: true, isRoot: true }],
      shares: [],
      stateDir: path.join(tmp, name),
    };
  };
});

after(async () => {
  assert.deepEqual(await pidsMatching("qemu-system"), [], "no QEMU outlives the tests");
  assert.deepEqual(await pidsMatching(VHOST_VSOCK), [], "no vhost-device-vsock outlives the tests");
  await rm(tmp, { recursive: true, force: true });
});

describe("one VM with the agent over vsock", () => {
  let vm: QemuVm;
  before(async () => {
    vm = await bootQemuVm(await spec("shared"), { home, agent: "vsock" });
    process.stderr.write(`# boot over vsock (spawn -> agent READY) under ${vm.accel}: ${vm.bootMs} ms\n`);
  });
  after(async () => {
    await vm?.close();
    assert.deepEqual(
      (await readdir(path.join(tmp, "shared"))).filter((f) => f.includes(".sock")),
      [],
      "close() removes every socket",
    );
  });

  async function run(args: string[]) {
    const out = sink();
    const err = sink();
    const p = await vm.agent.start({ args, env: ["PATH=/bin"] }, { stdout: out, stderr: err });
    const exit = await within(p.exited, 60_000, `${args.join(" ")} to exit`);
    return { status: exit.status, out: out.data(), err: err.data() };
  }

  test("the guest init says it uses vsock; stdout and stderr arrive apart; the exit status", async () => {
    assert.equal(vm.transport, "vsock");
    const r = await run(["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert.equal(r.status, 3);
    assert.equal(r.out.toString(), "out\n");
    assert.equal(r.err.toString(), "err\n");
    assert.match(await vm.consoleTail(200), /agent: vsock port 1024/);
  });

  test("stdin goes in over vsock and comes back", async () => {
    const out = sink();
    const { Readable } = await import("node:stream");
    const p = await vm.agent.start(
      { args: ["cat"], env: ["PATH=/bin"] },
      { stdout: out, stdin: Readable.from([Buffer.from("to the guest and back\n")]) },
    );
    assert.equal((await within(p.exited, 60_000, "cat to exit")).status, 0);
    assert.equal(out.data().toString(), "to the guest and back\n");
  });

  test("10 MB of output arrive complete (checksum)", async () => {
    const r = await run(["sh", "-c", "head -c 10485760 /dev/zero | tr '\\0' 'k'; echo"]);
    assert.equal(r.status, 0);
    assert.equal(r.out.length, 10 * 1024 * 1024 + 1);
    const want = createHash("sha256")
      .update(Buffer.alloc(10 * 1024 * 1024, "k"))
      .update("\n")
      .digest("hex");
    assert.equal(createHash("sha256").update(r.out).digest("hex"), want);
  });

  test("exec over a host-initiated CONNECT: a second session runs a process while the first channel works", async () => {
    const session = await vm.openSession(20_000);
    try {
      const out = sink();
      const p = await session.start(
        { args: ["sh", "-c", "echo from the session; exit 7"], env: ["PATH=/bin"] },
        {
          stdout: out,
        },
      );
      assert.equal((await within(p.exited, 60_000, "the session's process")).status, 7);
      assert.equal(out.data().toString(), "from the session\n");
      // the first channel is untouched
      assert.equal((await run(["echo", "still here"])).out.toString(), "still here\n");
    } finally {
      session.close();
    }
    // closing the session does not end the VM
    assert.equal((await run(["true"])).status, 0);
  });

  test("a host-initiated CONNECT to a port nothing listens on is refused, within its deadline", async () => {
    await assert.rejects(vm.connect(4242, 1500), /did not accept a vsock connection on port 4242/);
  });
});

test("a guest that never connects over vsock: a clear error with the console tail, nothing left", async () => {
  // the init connects to port 1024; the host listens on 1024 but the guest is told to use 1999
  const s = await spec("never", ["kindling.agent_port=1999"]);
  s.cmdline = s.cmdline.replace("kindling.agent_port=1024 ", "");
  await assert.rejects(
    bootQemuVm(s, { home, agent: "vsock", bootTimeoutMs: 45_000 }),
    (e: Error) =>
      /did not connect to the host over vsock port 1024/.test(e.message) &&
      /last console lines/.test(e.message) &&
      /vsock connect to port 1999/.test(e.message),
  );
  assert.deepEqual(await pidsMatching("qemu-system"), []);
  assert.deepEqual(await pidsMatching(VHOST_VSOCK), []);
  assert.deepEqual(
    (await readdir(path.join(tmp, "never"))).filter((f) => f.includes(".sock")),
    [],
  );
});

test("vhost-device-vsock dying mid-run: the process fails at once with a clear error; nothing is left", async () => {
  const vm = await bootQemuVm(await spec("dies"), { home, agent: "vsock" });
  try {
    const p = await vm.agent.start({ args: ["sleep", "600"], env: ["PATH=/bin"] }, {});
    const [pid] = await pidsMatching(VHOST_VSOCK);
    assert.ok(pid, "vhost-device-vsock runs");
    process.kill(pid, "SIGKILL");
    await assert.rejects(within(p.exited, 20_000, "the process to fail"));
    await within(vm.wait(), 20_000, "QEMU to be stopped");
    assert.match(vm.helperFailure ?? "", /vhost-device-vsock exited \(signal SIGKILL\)/);
  } finally {
    await vm.close();
  }
  assert.deepEqual(await pidsMatching("qemu-system"), []);
  assert.equal(existsSync(path.join(tmp, "dies")), true);
  assert.deepEqual(
    (await readdir(path.join(tmp, "dies"))).filter((f) => f.includes(".sock")),
    [],
  );
});
