/** The guest boot chain's host-side pieces, without booting: wire format, client, cpio, modules, vmlinux. */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { Duplex, PassThrough, Writable } from "node:stream";
import { after, before, test } from "node:test";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { AgentClient } from "../src/vm/agent/client.js";
import {
  decodeStart,
  encodeConfigure,
  encodeFrame,
  encodeResize,
  encodeStart,
  FrameDecoder,
  MAX_GROUPS,
  MsgType,
  OUTPUT_WINDOW,
  PayloadReader,
  PayloadWriter,
  PROTOCOL_VERSION,
} from "../src/vm/agent/protocol.js";
import { buildInitramfs, moduleLoadOrder, newcArchive, readModuleIndex } from "../src/vm/initramfs.js";
import { extractVmlinux, guestCmdline } from "../src/vm/kernel.js";
import { qemuArgs } from "../src/vm/qemu.js";

let tmp: string;
before(async () => {
  tmp = await mkdtemp("/tmp/kindling-guest-test-");
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

test("frames survive arbitrary fragmentation and carry any bytes", () => {
  const payloads = [Buffer.alloc(0), Buffer.from([0, 255, 10, 0]), randomBytes(70_000)];
  const wire = Buffer.concat(payloads.map((p, i) => encodeFrame(MsgType.STDOUT, i + 1, p)));
  const dec = new FrameDecoder();
  const got = [];
  for (let off = 0; off < wire.length; off += 7) got.push(...dec.push(wire.subarray(off, off + 7)));
  assert.equal(got.length, 3);
  got.forEach((f, i) => {
    assert.equal(f.type, MsgType.STDOUT);
    assert.equal(f.id, i + 1);
    assert.deepEqual(f.payload, payloads[i]);
  });
  const bad = encodeFrame(1, 0);
  bad[4] = 9;
  assert.throws(() => new FrameDecoder().push(bad), /protocol version 9/);
});

test("START and CONFIGURE payloads have the documented layout", () => {
  const start = new PayloadReader(
    encodeStart(
      {
        args: ["sh", Buffer.from([0xff, 0x0a])],
        env: ["A=b c"],
        cwd: "/w",
        uid: 5,
        gid: 6,
        additionalGids: [7, 4000000000],
      },
      true,
    ),
  );
  // flags, uid, gid, list<u32> supplementary groups (protocol version 2), cwd, args, env
  assert.deepEqual([start.u32(), start.u32(), start.u32()], [1, 5, 6]);
  assert.deepEqual([start.u32(), start.u32(), start.u32()], [2, 7, 4000000000]);
  assert.equal(start.bytes().toString(), "/w");
  assert.equal(start.u32(), 2);
  assert.equal(start.bytes().toString(), "sh");
  assert.deepEqual(start.bytes(), Buffer.from([0xff, 0x0a]));
  assert.equal(start.u32(), 1);
  assert.equal(start.bytes().toString(), "A=b c");
  start.end();
  const cfg = new PayloadReader(
    encodeConfigure({
      hostname: "h",
      mounts: [{ kind: "virtiofs", source: "t", target: "/m", readOnly: true }],
    }),
  );
  assert.equal(cfg.bytes().toString(), "h");
  assert.equal(cfg.u32(), 1);
  assert.equal(cfg.u32(), 2);
  assert.deepEqual([cfg.bytes(), cfg.bytes(), cfg.bytes(), cfg.bytes()].map(String), ["t", "/m", "", ""]);
  assert.equal(cfg.u32(), 1);
  assert.throws(
    () => encodeConfigure({ mounts: [{ kind: "tmpfs", source: "", target: "rel" }] }),
    /absolute/,
  );
});

test("START round-trips through encodeStart/decodeStart; the group count is capped", () => {
  const spec = {
    args: ["id", "-G"],
    env: ["PATH=/bin"],
    cwd: "/home/app",
    uid: 1000,
    gid: 1000,
    additionalGids: Array.from({ length: MAX_GROUPS }, (_, i) => 2000 + i),
  };
  const got = decodeStart(encodeStart(spec, false));
  assert.equal(got.stdinPipe, false);
  assert.deepEqual(
    {
      ...got.spec,
      args: got.spec.args.map(String),
      env: got.spec.env!.map(String),
      cwd: String(got.spec.cwd),
    },
    spec,
  );
  // absent groups are an empty list, not a missing field
  const plain = decodeStart(encodeStart({ args: ["true"] }, true));
  assert.deepEqual(
    [plain.stdinPipe, plain.spec.uid, plain.spec.gid, plain.spec.additionalGids],
    [true, 0, 0, []],
  );
  assert.throws(
    () => encodeStart({ ...spec, additionalGids: [...spec.additionalGids, 1] }, false),
    /too many supplementary groups \(65; at most 64\)/,
  );
  assert.throws(() => encodeStart({ args: ["x"], uid: -1 }, false), /uid -1 is not a valid id/);
  assert.throws(() => encodeStart({ args: ["x"], additionalGids: [1.5] }, false), /group 1.5/);
  // a payload claiming more groups than the limit, or with bytes left over, is refused
  const tooMany = new PayloadWriter()
    .u32(0)
    .u32(0)
    .u32(0)
    .u32(MAX_GROUPS + 1)
    .done();
  assert.throws(() => decodeStart(tooMany), /too many supplementary groups/);
  assert.throws(() => decodeStart(Buffer.concat([encodeStart(spec, false), Buffer.from([0])])), /trailing/);
  assert.equal(PROTOCOL_VERSION, 4);
  assert.equal(encodeFrame(MsgType.START, 1)[4], 4, "the header carries the version");
  // -t (version 4): flag 2 and the pty's size after env; RESIZE carries rows and cols
  const tty = decodeStart(encodeStart({ args: ["sh"] }, false, { rows: 33, cols: 101 }));
  assert.deepEqual(tty.tty, { rows: 33, cols: 101 });
  assert.equal(new PayloadReader(encodeStart({ args: ["sh"] }, true, { rows: 1, cols: 2 })).u32(), 3);
  assert.equal(decodeStart(encodeStart({ args: ["sh"] }, false)).tty, undefined);
  assert.deepEqual([...encodeResize({ rows: 40, cols: 120 })], [40, 0, 0, 0, 120, 0, 0, 0]);
});

/** A fake guest on the other end of a Duplex pair: reads host frames, lets the test answer. */
function fakeGuest() {
  const toHost = new PassThrough();
  const fromHost = new PassThrough();
  const hostSide = Duplex.from({ readable: toHost, writable: fromHost });
  const dec = new FrameDecoder();
  const received: { type: number; id: number; payload: Buffer }[] = [];
  fromHost.on("data", (d: Buffer) => received.push(...dec.push(d)));
  const send = (type: number, id: number, payload: Buffer = Buffer.alloc(0)) =>
    toHost.write(encodeFrame(type, id, payload));
  return { hostSide, received, send };
}

test("the client writes nothing before READY, then starts a process and holds credit for a full sink", async () => {
  const g = fakeGuest();
  const client = new AgentClient(g.hostSide);
  const startP = client.start({ args: ["x"] }, { stdout: new PassThrough({ highWaterMark: 1 }) });
  await new Promise((r) => setImmediate(r));
  assert.equal(g.received.length, 0, "nothing before READY");
  g.send(MsgType.READY, 0, new PayloadWriter().u32(PROTOCOL_VERSION).bytes("6.1").done());
  await new Promise((r) => setImmediate(r));
  assert.equal(g.received[0].type, MsgType.START);
  const id = g.received[0].id;
  g.send(MsgType.STARTED, id, new PayloadWriter().u32(42).done());
  const proc = await startP;
  assert.equal(proc.pid, 42);
  // the sink (highWaterMark 1, never read) is full after one chunk: no credit comes back
  g.send(MsgType.STDOUT, id, Buffer.alloc(1000));
  g.send(MsgType.STDOUT, id, Buffer.alloc(1000));
  await new Promise((r) => setImmediate(r));
  assert.equal(g.received.filter((f) => f.type === MsgType.OUTPUT_CREDIT).length, 0);
  g.send(MsgType.EXITED, id, new PayloadWriter().u32(3).u32(0).done());
  assert.deepEqual(await proc.exited, { status: 3, signal: 0 });
  assert.ok(OUTPUT_WINDOW >= 64 * 1024);
  client.close();
});

test("a channel that closes fails pending work with a clear error", async () => {
  const g = fakeGuest();
  const client = new AgentClient(g.hostSide);
  const ready = client.ready();
  g.hostSide.destroy();
  await assert.rejects(ready, /VM agent channel/);
});

test("credit returns once a slow sink drains", async () => {
  const g = fakeGuest();
  const client = new AgentClient(g.hostSide);
  g.send(MsgType.READY, 0, new PayloadWriter().u32(PROTOCOL_VERSION).bytes("6.1").done());
  const slow = new Writable({
    highWaterMark: 10,
    write(_c, _e, cb) {
      setTimeout(cb, 5);
    },
  });
  const startP = client.start({ args: ["x"] }, { stdout: slow });
  await new Promise((r) => setTimeout(r, 10));
  const id = g.received[0].id;
  g.send(MsgType.STARTED, id, new PayloadWriter().u32(7).done());
  await startP;
  for (let i = 0; i < 5; i++) g.send(MsgType.STDOUT, id, Buffer.alloc(100));
  await new Promise((r) => setTimeout(r, 100));
  let credited = 0;
  for (const f of g.received.filter((x) => x.type === MsgType.OUTPUT_CREDIT))
    credited += f.payload.readUInt32LE(0);
  assert.equal(credited, 500);
  client.close();
});

test("newc archives read back with cpio", async () => {
  const archive = newcArchive([
    { name: "dir", mode: 0o040755 },
    { name: "dir/file", mode: 0o100644, data: Buffer.from("abc") },
    { name: "dev", mode: 0o040755 },
    { name: "dev/console", mode: 0o020600, rdevMajor: 5, rdevMinor: 1 },
  ]);
  const file = path.join(tmp, "a.cpio");
  await writeFile(file, archive);
  const { stdout } = await exec("sh", ["-c", `cpio -itv < ${file}`]);
  assert.match(stdout, /dir\/file/);
  assert.match(stdout, /crw-------.*5,\s+1.*dev\/console/);
  assert.deepEqual(newcArchive([{ name: "x", mode: 0o100644, data: Buffer.from("1") }]).length % 4, 0);
});

test("module load order comes from modules.dep, dependencies first, built-ins skipped", async () => {
  const dir = path.join(tmp, "modules");
  await mkdir(dir, { recursive: true });
  await writeFile(
    path.join(dir, "modules.dep"),
    [
      "kernel/a/virtio_blk.ko.xz: kernel/v/virtio.ko kernel/v/virtio_ring.ko",
      "kernel/v/virtio.ko: kernel/v/virtio_ring.ko",
      "kernel/v/virtio_ring.ko:",
      "kernel/f/fuse-x.ko:",
      "",
    ].join("\n"),
  );
  await writeFile(path.join(dir, "modules.builtin"), "kernel/fs/ext4/ext4.ko\n");
  const index = await readModuleIndex(dir);
  assert.deepEqual(moduleLoadOrder(index, ["virtio_blk", "ext4", "fuse_x", "virtio"]), [
    "kernel/v/virtio_ring.ko",
    "kernel/v/virtio.ko",
    "kernel/a/virtio_blk.ko.xz",
    "kernel/f/fuse-x.ko",
  ]);
  assert.throws(() => moduleLoadOrder(index, ["nope"]), /no module nope/);
});

test("the initramfs holds /init, the modules in order and their list; it is cached by content", async () => {
  const dir = path.join(tmp, "lib", "6.1.0-test");
  await mkdir(path.join(dir, "kernel"), { recursive: true });
  await writeFile(path.join(dir, "modules.dep"), "kernel/b.ko: kernel/a.ko\nkernel/a.ko:\n");
  await writeFile(path.join(dir, "kernel", "a.ko"), "A");
  await writeFile(path.join(dir, "kernel", "b.ko"), "B");
  const init = path.join(tmp, "init-bin");
  await writeFile(init, "#!init");
  const home = new KindlingHome(path.join(tmp, "home")).ensure();
  const one = await buildInitramfs({ home, modulesDir: dir, initBinary: init, modules: ["b"] });
  const two = await buildInitramfs({ home, modulesDir: dir, initBinary: init, modules: ["b"] });
  assert.equal(one, two);
  const out = path.join(tmp, "x");
  await mkdir(out);
  await exec("sh", ["-c", `cpio -idm --quiet < ${one}`], { cwd: out });
  assert.equal(await readFile(path.join(out, "init"), "utf8"), "#!init");
  assert.equal(
    await readFile(path.join(out, "kindling", "modules"), "utf8"),
    "/lib/modules/6.1.0-test/kernel/a.ko\n/lib/modules/6.1.0-test/kernel/b.ko\n",
  );
});

test("for a kernel with every driver built in the initramfs holds only /init and no module list", async () => {
  const init = path.join(tmp, "init-bin-2");
  await writeFile(init, "#!init2");
  const home = new KindlingHome(path.join(tmp, "home-built")).ensure();
  const cpio = await buildInitramfs({ home, initBinary: init });
  const out = path.join(tmp, "x-built");
  await mkdir(out);
  await exec("sh", ["-c", `cpio -idm --quiet < ${cpio}`], { cwd: out });
  assert.equal(await readFile(path.join(out, "init"), "utf8"), "#!init2");
  assert.equal(await readFile(path.join(out, "kindling", "modules"), "utf8").catch(() => "none"), "none");
});

test("vmlinux is found by its compression magic inside a bzImage-like file", async () => {
  const elf = Buffer.concat([Buffer.from("\x7fELF", "latin1"), randomBytes(64), Buffer.alloc(2 << 20, 7)]);
  const raw = path.join(tmp, "vmlinux.raw");
  await writeFile(raw, elf);
  await exec("lz4", ["-l", "-q", "-f", raw, `${raw}.lz4`]);
  const compressed = await readFile(`${raw}.lz4`);
  // a decoy magic before the real stream, trailing bytes after it (as in a real bzImage)
  const image = Buffer.concat([
    randomBytes(4096),
    Buffer.from([0x02, 0x21, 0x4c, 0x18, 1, 2]),
    compressed,
    randomBytes(999),
  ]);
  const bz = path.join(tmp, "vmlinuz");
  await writeFile(bz, image);
  await extractVmlinux(bz, path.join(tmp, "vmlinux"));
  assert.deepEqual(await readFile(path.join(tmp, "vmlinux")), elf);
  await writeFile(bz, randomBytes(10_000));
  await assert.rejects(extractVmlinux(bz, path.join(tmp, "vmlinux2")), /no compressed vmlinux/);
});

test("the guest command line carries the init's options and TCG's needs", () => {
  const line = guestCmdline({
    tmpfsSize: "64m",
    scratch: "/dev/vdb",
    agent: "vsock",
    agentPort: 1025,
    tcg: true,
  });
  for (const p of ["console=ttyS0", "panic=-1", "kindling.tmpfs_size=64m", "kindling.scratch=/dev/vdb"]) {
    assert.ok(line.split(" ").includes(p), p);
  }
  assert.match(line, /kindling.agent=vsock kindling.agent_port=1025/);
  assert.match(
    line,
    /tsc_early_khz=\d+ tsc=reliable initcall_blacklist=cmos_init,init_kprobe_trace cryptomgr.notests/,
  );
  assert.throws(() => guestCmdline({ extra: ["a b"] }), /white space/);
});

test("a VmSpec renders to a microvm command line: root first, read-only drives, agent port, shares", () => {
  const args = qemuArgs(
    {
      kernelPath: "/k",
      initrdPath: "/i",
      cmdline: "console=ttyS0",
      memoryMiB: 512,
      vcpus: 2,
      drives: [
        { id: "data", path: "/d,1.img", readOnly: false, isRoot: false },
        { id: "root", path: "/r.img", readOnly: true, isRoot: true },
      ],
      shares: [{ tag: "t0", source: "/src" }],
      stateDir: "/s",
    },
    {
      consoleLog: "/s/c.log",
      agentSocket: "a.sock",
      qmpSocket: "q.sock",
      virtiofsSockets: new Map([["t0", "v.sock"]]),
    },
    "tcg",
  );
  const line = args.join(" ");
  assert.match(line, /^-M microvm,rtc=on,memory-backend=mem /);
  assert.match(line, /-accel tcg -cpu max -m 512 -smp 2/);
  assert.match(line, /-append console=ttyS0 tsc_early_khz=\d+ tsc=reliable initcall_blacklist=cmos_init/);
  const drives = args.filter((a) => a.startsWith("id=drive"));
  assert.deepEqual(drives, [
    "id=drive0,file=/r.img,format=raw,if=none,read-only=on",
    "id=drive1,file=/d,,1.img,format=raw,if=none,read-only=off",
  ]);
  assert.ok(args.includes("virtserialport,chardev=agent,name=kindling.agent"));
  assert.ok(args.includes("socket,id=agent,path=a.sock,server=on,wait=off"));
  assert.ok(args.includes("vhost-user-fs-device,chardev=fs0,tag=t0"));
  assert.ok(args.includes("virtio-mmio.force-legacy=false"));
  assert.ok(args.includes("-no-reboot") && args.includes("-nodefaults"));
});
