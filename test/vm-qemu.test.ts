/**
 * Real VMs under QEMU (TCG here): the guest kernel fetched with apt on first use, Kindling's initramfs,
 * the C init and agent, a busybox SquashFS root. One VM is shared by most checks to keep boots few.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { copyFile, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { Readable, Writable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import type { RawRunFlags } from "../src/runtime/options.js";
import { startFailureStatus } from "../src/runtime/vm-runtime.js";
import { KindlingError } from "../src/util/errors.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { type GuestProcess, StartFailedError } from "../src/vm/agent/client.js";
import {
  type GuestConfig,
  MAX_GROUPS,
  MsgType,
  PayloadWriter,
  type StartSpec,
} from "../src/vm/agent/protocol.js";
import { prepareGuestBoot } from "../src/vm/kernel.js";
import { bootQemuVm, type QemuVm, QemuVmm } from "../src/vm/qemu.js";
import type { VmSpec } from "../src/vm/spec.js";
import { startPiped } from "./helpers/run.js";
import { readAll } from "./helpers/streams.js";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
// The kernel cache survives between runs (a fresh checkout fetches it with apt on the first one).
const home = new KindlingHome(
  process.env.KINDLING_HOME ?? path.join(repo, ".cache", "vm-test-home"),
).ensure();
let tmp: string;
let rootImage: string;
/** A home for `kindling run` (its run dirs), sharing the kernel cache. */
let runHome: KindlingHome;
let baseSpec: (name: string) => VmSpec;

/** A collecting Writable; `delayMs` makes it a slow consumer to exercise flow control. */
function sink(delayMs = 0): Writable & { data: () => Buffer } {
  const chunks: Buffer[] = [];
  const w = new Writable({
    highWaterMark: 16 * 1024,
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      if (delayMs) setTimeout(cb, delayMs);
      else cb();
    },
  }) as Writable & { data: () => Buffer };
  w.data = () => Buffer.concat(chunks);
  return w;
}

async function buildBusyboxRoot(dir: string): Promise<string> {
  const root = path.join(dir, "rootfs");
  for (const d of ["bin", "etc", "tmp", "proc", "sys", "dev", "root"])
    await mkdir(path.join(root, d), { recursive: true });
  await copyFile("/bin/busybox", path.join(root, "bin", "busybox"));
  const { stdout } = await exec("/bin/busybox", ["--list"]);
  for (const applet of stdout.split("\n").filter((a) => a && a !== "busybox")) {
    await symlink("busybox", path.join(root, "bin", applet));
  }
  await writeFile(
    path.join(root, "etc", "passwd"),
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
  );
  const image = path.join(dir, "root.sqfs");
  await exec("mksquashfs", [root, image, "-noappend", "-quiet", "-comp", "zstd", "-Xcompression-level", "3"]);
  return image;
}

async function runningQemuPids(): Promise<number[]> {
  const { stdout } = await exec("ps", ["-eo", "pid=,args="]);
  return stdout
    .split("\n")
    .filter((l) => l.includes("qemu-system-x86_64") && l.includes(tmp))
    .map((l) => Number.parseInt(l.trim(), 10));
}

before(async () => {
  tmp = await mkdtemp("/tmp/kindling-vm-test-");
  rootImage = await buildBusyboxRoot(tmp);
  runHome = new KindlingHome(path.join(tmp, "home")).ensure();
  await rm(runHome.kernel, { recursive: true, force: true });
  await symlink(home.kernel, runHome.kernel);
  const boot = await prepareGuestBoot(home, { boot: { tmpfsSize: "64m" } });
  baseSpec = (name) => ({
    ...boot,
    memoryMiB: 256,
    vcpus: 1,
    drives: [{ id: "root", path: rootImage, readOnly: true, isRoot: true }],
    shares: [],
    stateDir: path.join(tmp, name),
  });
});

after(async () => {
  assert.deepEqual(await runningQemuPids(), [], "no QEMU outlives the tests");
  await rm(tmp, { recursive: true, force: true });
});

const PATH = "PATH=/bin";

describe("one VM, many processes", () => {
  let vm: QemuVm;

  before(async () => {
    vm = await bootQemuVm(baseSpec("shared"), { home });
    process.stderr.write(`# boot (spawn -> agent READY) under ${vm.accel}: ${vm.bootMs} ms\n`);
    await vm.agent.configure({
      hostname: "kindling-test",
      mounts: [{ kind: "tmpfs", source: "", target: "/data/scratch", options: "size=8m" }],
    });
  });

  after(async () => {
    await vm?.close();
    const { code } = await exec("kill", ["-0", String(vm.pid)], { allowFailure: true });
    assert.notEqual(code, 0, "QEMU is gone after close()");
  });

  async function run(args: string[], io: { stdin?: Readable; slow?: number } = {}) {
    const out = sink(io.slow);
    const err = sink();
    const p = await vm.agent.start({ args, env: [PATH] }, { stdout: out, stderr: err, stdin: io.stdin });
    const exit = await p.exited;
    return { status: exit.status, signal: exit.signal, out: out.data(), err: err.data() };
  }

  test("QMP answers status queries", async () => {
    const status = (await vm.qmp("query-status")) as { status: string; running: boolean };
    assert.equal(status.status, "running");
  });

  test("exit statuses 0, 3 and 137 (killed by SIGKILL)", async () => {
    assert.equal((await run(["true"])).status, 0);
    assert.equal((await run(["sh", "-c", "exit 3"])).status, 3);
    const killed = await run(["sh", "-c", "kill -9 $$"]);
    assert.equal(killed.status, 137);
    assert.equal(killed.signal, 9);
  });

  test("stdout and stderr arrive apart", async () => {
    const r = await run(["sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2"]);
    assert.equal(r.out.toString(), "out1\nout2\n");
    assert.equal(r.err.toString(), "err1\nerr2\n");
  });

  test("arguments with spaces, quotes, newlines and non-UTF-8 bytes arrive intact", async () => {
    const args = ["a b", "'single'", '"double"', "line1\nline2", "$HOME `x`", "", "tab\there", "é"];
    const r = await run(["sh", "-c", 'for a in "$@"; do printf "%s\\0" "$a"; done', "sh", ...args]);
    assert.deepEqual(r.out.toString().split("\0").slice(0, -1), args);
    const raw = Buffer.from([0xff, 0xfe, 0x41]);
    const p = await vm.agent.start({ args: ["printf", "%s", raw], env: [PATH] }, { stdout: sink() });
    assert.equal((await p.exited).status, 0);
  });

  test("environment, cwd, uid, gid and supplementary groups are applied", async () => {
    const out = sink();
    const p = await vm.agent.start(
      {
        args: ["sh", "-c", 'echo "$FOO|$(pwd)|$(id -u):$(id -g)|$(id -G)|$(hostname)"'],
        env: [PATH, "FOO=bar baz"],
        cwd: "/tmp",
        uid: 65534,
        gid: 65534,
        additionalGids: [2000, 3000],
      },
      { stdout: out },
    );
    assert.equal((await p.exited).status, 0);
    assert.equal(out.data().toString(), "bar baz|/tmp|65534:65534|65534 2000 3000|kindling-test\n");
    // without groups: none are kept from PID 1
    const root = await run(["id", "-G"]);
    assert.equal(root.out.toString(), "0\n");
    // the guest refuses more than 64 groups too (encodeStart would not send them: a raw START, id 0, whose
    // FAILED the client reports as a protocol error)
    const w = new PayloadWriter()
      .u32(0)
      .u32(0)
      .u32(0)
      .u32(MAX_GROUPS + 1);
    for (let i = 0; i <= MAX_GROUPS; i++) w.u32(1000 + i);
    const refused = once(vm.agent, "protocolError");
    vm.agent.send(MsgType.START, 0, w.bytes("").list(["true"]).list([PATH]).done());
    const [e] = (await refused) as [Error];
    assert.match(e.message, /too many supplementary groups \(65; at most 64\)/);
    assert.equal((await run(["true"])).status, 0, "the agent still runs processes");
  });

  test("CONFIGURE's hostname is in /etc/hostname and /etc/hosts, written into the overlay", async () => {
    const r = await run([
      "sh",
      "-c",
      "cat /etc/hostname /etc/hosts; ls -l /etc/hosts | cut -c1-10; ls -a /etc | grep kindling | wc -l",
    ]);
    assert.equal(r.status, 0, r.err.toString());
    assert.equal(
      r.out.toString(),
      "kindling-test\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\tkindling-test\n-rw-r--r--\n0\n",
    );
  });

  test("10 MB of output arrive complete through a slow consumer (flow control)", async () => {
    const script =
      "head -c 10485760 /dev/urandom > /tmp/r10; sha256sum /tmp/r10 >&2; cat /tmp/r10; rm /tmp/r10";
    const r = await run(["sh", "-c", script], { slow: 1 });
    assert.equal(r.status, 0);
    assert.equal(r.out.length, 10 * 1024 * 1024);
    const sha = createHash("sha256").update(r.out).digest("hex");
    assert.equal(r.err.toString().split(" ")[0], sha);
  });

  test("8 MB of output arrive complete (checksum)", async () => {
    const r = await run([
      "sh",
      "-c",
      "head -c 8388608 /dev/urandom > /tmp/r8; sha256sum /tmp/r8 >&2; cat /tmp/r8",
    ]);
    assert.equal(r.out.length, 8 * 1024 * 1024);
    assert.equal(r.err.toString().split(" ")[0], createHash("sha256").update(r.out).digest("hex"));
  });

  test("stdin is delivered, then EOF", async () => {
    const input = randomBytes(1024 * 1024 + 17);
    const r = await run(["sh", "-c", "sha256sum"], {
      stdin: Readable.from([input.subarray(0, 1000), input.subarray(1000)]),
    });
    assert.equal(r.out.toString().split(" ")[0], createHash("sha256").update(input).digest("hex"));
    // a reader that stops early: the rest of stdin is dropped, nothing stalls
    const early = await run(["head", "-c", "10"], { stdin: Readable.from([randomBytes(2 * 1024 * 1024)]) });
    assert.equal(early.status, 0);
    assert.equal(early.out.length, 10);
    const empty = await run(["cat"], { stdin: Readable.from([]) });
    assert.equal(empty.status, 0);
    assert.equal(empty.out.length, 0);
  });

  test("an orphaned background process holding stdout does not hang the run", async () => {
    const t0 = Date.now();
    const r = await run(["sh", "-c", "sleep 1000 & echo started"]);
    assert.equal(r.status, 0);
    assert.equal(r.out.toString(), "started\n");
    assert.ok(Date.now() - t0 < 5000, "returned promptly");
  });

  test("an orphan that writes forever does not keep the run open", async () => {
    const r = await run(["sh", "-c", "(while :; do echo spam; done) & echo done"]);
    assert.equal(r.status, 0);
    assert.match(r.out.toString(), /done\n/);
  });

  test("the guest clock runs at real speed (tsc_early_khz matches the host)", async () => {
    // A guest clock running fast ends `sleep 2` early; one running slow ends it late. "Late" is judged
    // against a `true` run just before, so a loaded host's slower runs are not taken for a slow clock.
    let t0 = Date.now();
    assert.equal((await run(["true"])).status, 0);
    const overhead = Date.now() - t0;
    t0 = Date.now();
    assert.equal((await run(["sleep", "2"])).status, 0);
    const took = Date.now() - t0;
    assert.ok(took > 1800, `sleep 2 took ${took} ms: the guest clock runs fast`);
    assert.ok(
      took < 2 * overhead + 3000,
      `sleep 2 took ${took} ms (a run of true: ${overhead} ms): the guest clock runs slow`,
    );
    // the wall clock comes from the RTC
    const guestNow = Number((await run(["date", "+%s"])).out.toString());
    assert.ok(Math.abs(guestNow - Date.now() / 1000) < 10, `guest time ${guestNow}`);
  });

  test("a second process runs alongside the first (exec), and signals reach it", async () => {
    const out = sink();
    const long: GuestProcess = await vm.agent.start(
      { args: ["sh", "-c", "echo up; sleep 100"], env: [PATH] },
      { stdout: out },
    );
    const second = await run(["sh", "-c", "ps | grep -c 'sleep 100'"]);
    assert.equal(second.status, 0);
    assert.ok(Number(second.out.toString()) >= 1);
    long.kill("SIGTERM");
    const exit = await long.exited;
    assert.equal(exit.status, 128 + 15);
    assert.equal(out.data().toString(), "up\n");
  });

  test("signals sent to PID 1 are forwarded to the running processes", async () => {
    const out = sink();
    const p = await vm.agent.start(
      {
        args: ["sh", "-c", 'trap "echo got-term; exit 5" TERM; echo ready; while :; do sleep 0.1; done'],
        env: [PATH],
      },
      { stdout: out },
    );
    while (!out.data().toString().includes("ready")) await new Promise((r) => setTimeout(r, 20));
    await run(["kill", "-TERM", "1"]);
    assert.equal((await p.exited).status, 5);
    assert.equal(out.data().toString(), "ready\ngot-term\n");
  });

  test("writes to / succeed; mounts from CONFIGURE are there; loopback is up", async () => {
    const r = await run([
      "sh",
      "-c",
      "echo persisted-in-this-vm > /marker && cat /marker && grep -c ' /data/scratch tmpfs' /proc/mounts && " +
        "cat /sys/class/net/lo/flags && ping -c 1 -W 2 127.0.0.1 >/dev/null && echo ping-ok",
    ]);
    assert.equal(r.status, 0, r.err.toString());
    assert.equal(r.out.toString(), "persisted-in-this-vm\n1\n0x9\nping-ok\n");
  });

  test("a command that cannot start is a clear error carrying its errno and step (126/127 without the text)", async () => {
    const failure = (p: Promise<unknown>) =>
      p.then(
        () => assert.fail("started"),
        (e: Error) => {
          assert.ok(e instanceof StartFailedError, String(e));
          return e;
        },
      );
    const missing = await failure(vm.agent.start({ args: ["/no/such/program"], env: [PATH] }));
    assert.match(missing.message, /No such file/);
    assert.deepEqual([missing.errno, missing.step, startFailureStatus(missing)], [2, "exec", 127]);
    // a missing working directory is created (as docker and runc do): a file in its place cannot be entered
    const badCwd = await failure(vm.agent.start({ args: ["true"], env: [PATH], cwd: "/etc/passwd" }));
    assert.match(badCwd.message, /chdir/);
    assert.deepEqual([badCwd.errno, badCwd.step, startFailureStatus(badCwd)], [20, "chdir", 126]);
    const notExec = await failure(vm.agent.start({ args: ["/etc/passwd"], env: [PATH] }));
    assert.deepEqual([notExec.errno, notExec.step, startFailureStatus(notExec)], [13, "exec", 126]);
  });
});

/** `kindling run` of the busybox root (a SquashFS path: no import) through the real runtime path. */
function runContainerOf(command: string[], flags: RawRunFlags) {
  return startPiped({ home: runHome, image: rootImage, command, flags: { runtime: "qemu", ...flags } });
}

/** Boots `spec`, sends CONFIGURE when given, runs one process to its end, and always closes the VM. */
async function bootAndRun(
  spec: VmSpec,
  opts: { guest?: GuestConfig; process: StartSpec; stdout?: Writable; stderr?: Writable },
) {
  const vm = await new QemuVmm({ home }).boot(spec);
  try {
    if (opts.guest) await vm.agent.configure(opts.guest);
    const p = await vm.agent.start(opts.process, { stdout: opts.stdout, stderr: opts.stderr });
    return { ...(await p.exited), bootMs: vm.bootMs };
  } finally {
    await vm.close();
  }
}

test("run: a fresh VM does not see the previous VM's writes; --timeout stops the process", async () => {
  const handle = await runContainerOf(
    ["sh", "-c", "test -e /marker && echo leaked || echo clean; sleep 100"],
    { timeout: "4" },
  );
  const s = await handle.started;
  const [out, , r] = await Promise.all([readAll(s.stdout), readAll(s.stderr), handle.result]);
  assert.equal(out, "clean\n");
  assert.equal(r.stoppedBy, "timeout");
  assert.equal(r.status, 143);
  assert.deepEqual(await runningQemuPids(), []);
});

test("a guest without CONFIGURE's hostname gets no /etc/hostname", async () => {
  const out = sink();
  const r = await bootAndRun(baseSpec("no-hostname"), {
    process: { args: ["sh", "-c", "test -e /etc/hostname || echo none"], env: [PATH] },
    stdout: out,
  });
  assert.equal(r.status, 0);
  assert.equal(out.data().toString(), "none\n");
});

/** A squashfs of the busybox root changed by `edit` (a copy of the tree; the shared image is untouched). */
async function variantRoot(name: string, edit: (root: string) => Promise<void>): Promise<string> {
  const root = path.join(tmp, `rootfs-${name}`);
  await exec("cp", ["-a", path.join(tmp, "rootfs"), root]);
  await edit(root);
  const image = path.join(tmp, `root-${name}.sqfs`);
  await exec("mksquashfs", [root, image, "-noappend", "-quiet", "-comp", "zstd", "-Xcompression-level", "3"]);
  return image;
}

test("exit status and output of a short run; an image without /etc gets the hostname files", async () => {
  const noEtc = await variantRoot("no-etc", (root) => rm(path.join(root, "etc"), { recursive: true }));
  const out = sink();
  const r = await bootAndRun(
    { ...baseSpec("short"), drives: [{ id: "root", path: noEtc, readOnly: true, isRoot: true }] },
    {
      guest: { hostname: "box" },
      process: {
        args: [
          "sh",
          "-c",
          "hostname; cat /etc/hostname; grep -c '^127.0.1.1\tbox$' /etc/hosts; ls -ld /etc | cut -c1-10; exit 7",
        ],
        env: [PATH],
      },
      stdout: out,
    },
  );
  assert.equal(r.status, 7);
  assert.equal(out.data().toString(), "box\nbox\n1\ndrwxr-xr-x\n");
  process.stderr.write(`# boot: ${r.bootMs} ms\n`);
});

test("run: a stop request (Ctrl-C) stops the process, then the VM", async () => {
  const handle = await runContainerOf(["sh", "-c", "echo running; sleep 100"], {});
  const s = await handle.started;
  let text = "";
  await new Promise<void>((resolve) =>
    s.stdout!.on("data", (d: Buffer) => {
      text += d;
      if (text.includes("running")) resolve();
    }),
  );
  s.stderr!.resume();
  handle.stop("SIGINT");
  const [rest, r] = await Promise.all([readAll(s.stdout), handle.result]);
  assert.equal(text + rest, "running\n");
  assert.equal(r.stoppedBy, "SIGINT");
  assert.equal(r.status, 143);
  assert.deepEqual(await runningQemuPids(), []);
});

test("an /etc/hosts that cannot be written fails CONFIGURE with the reason", async () => {
  const hostsDir = await variantRoot("hosts-dir", (root) => mkdir(path.join(root, "etc", "hosts")));
  await assert.rejects(
    bootAndRun(
      { ...baseSpec("hosts-dir"), drives: [{ id: "root", path: hostsDir, readOnly: true, isRoot: true }] },
      { guest: { hostname: "box" }, process: { args: ["true"], env: [PATH] } },
    ),
    (e: Error) => {
      assert.ok(e instanceof KindlingError, String(e));
      assert.match(e.message, /guest setup failed: write \/etc\/hosts: Is a directory/);
      return true;
    },
  );
  assert.deepEqual(await runningQemuPids(), []);
});

test("a guest kernel panic is a clear error with the console's last lines", async () => {
  const spec = baseSpec("panic");
  spec.cmdline += " rdinit=/nonexistent root=/dev/null";
  const err = await bootQemuVm(spec, { home, bootTimeoutMs: 60_000 }).then(
    () => null,
    (e: Error) => e,
  );
  assert.ok(err instanceof KindlingError, String(err));
  assert.match(err.message, /kernel panic/i);
  assert.match(err.message, /last console lines/);
  assert.match(err.message, /Kernel panic - not syncing/);
  assert.deepEqual(await runningQemuPids(), []);
});

test("a kernel panic while the process runs is a clear error, and the VM is gone", async () => {
  const handle = await runContainerOf(["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 100"], {});
  await assert.rejects(handle.result, (e: Error) => {
    assert.ok(e instanceof KindlingError);
    assert.match(e.message, /guest kernel panic/);
    assert.match(e.message, /sysrq/i);
    return true;
  });
  assert.deepEqual(await runningQemuPids(), []);
});

test("a garbage root drive fails the boot with the init's reason", async () => {
  const garbage = path.join(tmp, "garbage.img");
  await writeFile(garbage, randomBytes(1024 * 1024));
  const spec = {
    ...baseSpec("garbage"),
    drives: [{ id: "root", path: garbage, readOnly: true, isRoot: true }],
  };
  await assert.rejects(bootQemuVm(spec, { home }), (e: Error) => {
    assert.ok(e instanceof KindlingError);
    assert.match(e.message, /guest init failed: mount root \/dev\/vda/);
    assert.match(e.message, /FATAL: mount root \/dev\/vda/);
    return true;
  });
  assert.deepEqual(await runningQemuPids(), []);
});

test("a boot deadline is enforced", async () => {
  await assert.rejects(
    bootQemuVm(baseSpec("deadline"), { home, bootTimeoutMs: 300 }),
    /no agent READY within 300 ms/,
  );
  assert.deepEqual(await runningQemuPids(), []);
});

test("an ext4 root, ro and rw drives by device, a scratch disk as the writable layer, a virtio-fs share", async () => {
  const dataDir = path.join(tmp, "data-src");
  await mkdir(dataDir, { recursive: true });
  await writeFile(path.join(dataDir, "hello.txt"), "from a read-only ext4 drive\n");
  const dataImg = path.join(tmp, "data.ext4");
  await exec("mkfs.ext4", ["-q", "-F", "-d", dataDir, dataImg, "16M"]);
  const scratchImg = path.join(tmp, "scratch.ext4");
  await exec("mkfs.ext4", ["-q", "-F", scratchImg, "64M"]);
  const rwImg = path.join(tmp, "rw.ext4");
  await exec("mkfs.ext4", ["-q", "-F", rwImg, "8M"]);
  const shared = path.join(tmp, "shared");
  await mkdir(shared, { recursive: true });
  await writeFile(path.join(shared, "in.txt"), "host file\n");
  // the root as ext4 this time (the `copy` strategy's format): the init tries squashfs, then ext4
  const rootExt4 = path.join(tmp, "root.ext4");
  await exec("mkfs.ext4", ["-q", "-F", "-d", path.join(tmp, "rootfs"), rootExt4, "16M"]);
  const boot = await prepareGuestBoot(home, { boot: { scratch: "/dev/vdc" } });
  const spec: VmSpec = {
    ...baseSpec("drives"),
    ...boot,
    // longer than a Unix socket path may be: QEMU and virtiofsd still get their sockets
    stateDir: path.join(tmp, "a-long-state-directory-name-".repeat(4), "drives"),
    drives: [
      { id: "data", path: dataImg, readOnly: true, isRoot: false },
      { id: "root", path: rootExt4, readOnly: true, isRoot: true },
      { id: "scratch", path: scratchImg, readOnly: false, isRoot: false },
      { id: "rwdata", path: rwImg, readOnly: false, isRoot: false },
    ],
    shares: [{ tag: "share0", source: shared }],
  };
  const out = sink();
  const err = sink();
  const r = await bootAndRun(spec, {
    guest: {
      mounts: [
        { kind: "block", source: "/dev/vdb", target: "/mnt/data", fstype: "ext4", readOnly: true },
        { kind: "virtiofs", source: "share0", target: "/mnt/shared" },
        { kind: "block", source: "/dev/vdd", target: "/mnt/rw-data", fstype: "ext4" },
      ],
    },
    process: {
      args: [
        "sh",
        "-c",
        "cat /mnt/data/hello.txt; cat /mnt/shared/in.txt; echo guest > /mnt/shared/out.txt; " +
          "echo kept > /mnt/rw-data/f; " +
          "touch /mnt/data/x 2>/dev/null && echo rw-data || echo ro-data; " +
          "grep ' / overlay' /proc/mounts | grep -c upperdir=/mnt/rw/upper; echo big > /bigfile; df -k / | tail -1; " +
          "test -d /sys/fs/ext4/vda && echo ext4-root",
      ],
      env: [PATH],
    },
    stdout: out,
    stderr: err,
  });
  assert.equal(r.status, 0, err.data().toString());
  const lines = out.data().toString().split("\n");
  assert.deepEqual(lines.slice(0, 4), ["from a read-only ext4 drive", "host file", "ro-data", "1"]);
  assert.equal(await readFile(path.join(shared, "out.txt"), "utf8"), "guest\n");
  // the writable layer was the 64 MB scratch disk, not the tmpfs
  const kb = Number(lines[4].trim().split(/\s+/)[1]);
  assert.ok(kb > 40_000 && kb < 70_000, lines[4]);
  assert.equal(lines[5], "ext4-root");
  // the rw drive keeps its write after the VM is gone, and was unmounted cleanly at power off
  const { stdout } = await exec("debugfs", ["-R", "cat /f", rwImg]);
  assert.equal(stdout, "kept\n");
  const { stdout: header } = await exec("dumpe2fs", ["-h", rwImg]);
  assert.match(header, /Filesystem state:\s+clean\n/);
  assert.doesNotMatch(header, /needs_recovery/);
  assert.deepEqual(await runningQemuPids(), []);
});

test("QEMU dies with the Node process that started it, even on SIGKILL", async () => {
  const stateDir = path.join(tmp, "orphan");
  const script = `
    import { bootQemuVm } from ${JSON.stringify(path.join(repo, "dist/src/vm/qemu.js"))};
    const spec = JSON.parse(process.argv[1]);
    const vm = await bootQemuVm(spec, { accel: "tcg" });
    process.stdout.write(vm.pid + "\\n");
    setInterval(() => {}, 1000);
  `;
  const { spawn } = await import("node:child_process");
  const child = spawn(
    process.execPath,
    ["--input-type=module", "-e", script, JSON.stringify({ ...baseSpec("orphan"), stateDir })],
    {
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  const pid = await new Promise<number>((resolve, reject) => {
    child.stdout.on("data", (d: Buffer) => resolve(Number.parseInt(d.toString(), 10)));
    child.on("exit", (code) => reject(new Error(`child exited ${code}`)));
  });
  assert.ok(pid > 0);
  child.kill("SIGKILL");
  const deadline = Date.now() + 5000;
  let alive = true;
  while (alive && Date.now() < deadline) {
    alive = (await exec("kill", ["-0", String(pid)], { allowFailure: true })).code === 0;
    if (alive) await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(alive, false, "QEMU was killed with its parent");
});
