/**
 * `kindling run --runtime firecracker` for each strategy it supports, against the Firecracker test double
 * (test/helpers/fake-firecracker.ts validates every API body against the v1.16.1 schema), with the guest
 * agent played by this test: the drives, boot arguments and CONFIGURE mounts each strategy renders, the
 * process's output and status, and nothing left behind.
 */
import assert from "node:assert/strict";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { after, before, test } from "node:test";
import { parseRunOptions, type RawRunFlags } from "../src/runtime/options.js";
import { runtimeFor } from "../src/runtime/runtimes.js";
import {
  decodeStart,
  encodeFrame,
  FrameDecoder,
  MsgType,
  PayloadReader,
  PayloadWriter,
  PROTOCOL_VERSION,
} from "../src/vm/agent/protocol.js";
import { type Fixture, makeFixture } from "./helpers/firecracker-fixtures.js";
import { leftovers } from "./helpers/leftovers.js";
import { runPiped } from "./helpers/run.js";
import { type VmTestHome, vmTestHome } from "./helpers/vm-image.js";

let fx: Fixture;
let t: VmTestHome;
let ro: string;
let rw: string;

before(async () => {
  fx = await makeFixture();
  t = await vmTestHome();
  ro = path.join(t.tmp, "ro");
  rw = path.join(t.tmp, "rw");
  await mkdir(ro);
  await mkdir(rw);
  await writeFile(path.join(ro, "data"), "ro\n");
  await writeFile(path.join(rw, "keep"), "host file\n");
  Object.assign(process.env, {
    KINDLING_FIRECRACKER: fx.fakeBin,
    FAKE_FC_GUEST_DIR: fx.guestDir,
    FAKE_FC_GUEST_CONNECT: "1024",
  });
});

after(async () => {
  for (const k of ["KINDLING_FIRECRACKER", "FAKE_FC_GUEST_DIR", "FAKE_FC_GUEST_CONNECT", "FAKE_FC_RECORD"]) {
    delete process.env[k];
  }
  await fx.cleanup();
  await t.cleanup();
});

interface Mount {
  kind: number;
  source: string;
  target: string;
  fstype: string;
  ro: boolean;
}

/** The guest agent: READY; CONFIGURE -> CONFIGURED (mounts recorded); START -> output, exit 0; POWEROFF -> close. */
async function fakeAgent(onStart: () => Promise<void> = async () => {}) {
  const seen = { hostname: "", mounts: [] as Mount[], args: [] as string[], user: [] as number[][] };
  const server = net.createServer((s) => {
    const dec = new FrameDecoder();
    s.write(
      encodeFrame(MsgType.READY, 0, new PayloadWriter().u32(PROTOCOL_VERSION).bytes("6.1.0-fake").done()),
    );
    s.on("data", async (chunk: Buffer) => {
      for (const f of dec.push(chunk)) {
        const r = new PayloadReader(f.payload);
        if (f.type === MsgType.CONFIGURE) {
          seen.hostname = r.bytes().toString();
          const n = r.u32();
          for (let i = 0; i < n; i++) {
            const kind = r.u32();
            const source = r.bytes().toString();
            const target = r.bytes().toString();
            const fstype = r.bytes().toString();
            r.bytes(); // options
            seen.mounts.push({ kind, source, target, fstype, ro: r.u32() === 1 });
          }
          s.write(encodeFrame(MsgType.CONFIGURED, 0, new PayloadWriter().u32(0).bytes("").done()));
        } else if (f.type === MsgType.NETWORK) {
          // protocol 3: eth0 and resolv.conf before CONFIGURE; the init answers CONFIGURED
          s.write(encodeFrame(MsgType.CONFIGURED, 0, new PayloadWriter().u32(0).bytes("").done()));
        } else if (f.type === MsgType.START) {
          const { spec } = decodeStart(f.payload);
          seen.args = spec.args.map(String);
          seen.user = [[spec.uid!, spec.gid!], spec.additionalGids!];
          await onStart();
          s.write(encodeFrame(MsgType.STARTED, f.id, new PayloadWriter().u32(2).done()));
          s.write(encodeFrame(MsgType.STDOUT, f.id, Buffer.from(`ran ${seen.args.join(" ")}\n`)));
          s.write(encodeFrame(MsgType.EXITED, f.id, new PayloadWriter().u32(4).u32(0).done()));
        } else if (f.type === MsgType.POWEROFF) {
          s.end();
        }
      }
    });
    s.on("error", () => {});
  });
  const sock = path.join(fx.guestDir, "connect_1024.sock");
  await rm(sock, { force: true });
  server.listen(sock);
  await new Promise((r) => server.once("listening", r));
  return { seen, close: () => new Promise((r) => server.close(r)) };
}

async function run(flags: RawRunFlags, onStart?: () => Promise<void>) {
  const record = path.join(fx.dir, `api-${flags.rootfs}-${Date.now()}.jsonl`);
  process.env.FAKE_FC_RECORD = record;
  const agent = await fakeAgent(onStart);
  try {
    const { stdout, ...result } = await runPiped({
      home: t.home,
      image: "ml",
      command: ["echo", "hi"],
      flags: { runtime: "firecracker", ...flags },
    });
    const lines = (await readFile(record, "utf8")).trim().split("\n");
    const calls = lines.map((l) => JSON.parse(l)).filter((c) => c.method);
    return { result, stdout, calls, seen: agent.seen };
  } finally {
    await agent.close();
  }
}

/** The PUT /drives bodies, with run-dir paths shortened to their file name. */
function drives(
  calls: { method: string; path: string; body: Record<string, unknown>; status: number }[],
): Record<string, unknown>[] {
  for (const c of calls) assert.ok(c.status < 300, `${c.method} ${c.path}: ${c.status}`);
  return calls
    .filter((c) => c.path.startsWith("/drives/"))
    .map((c) => ({ ...c.body, path_on_host: path.basename(String(c.body.path_on_host)) }));
}

function bootArgs(calls: { path: string; body: { boot_args?: string } }[]): string {
  return calls.find((c) => c.path === "/boot-source")!.body.boot_args!;
}

const volumes = () => [`${ro}:/ro:ro`, `${rw}:/rw`];

test("firecracker --rootfs lazy: the lazy image file as root, -v packs as drives 1 and 2, binds in CONFIGURE", async () => {
  const r = await run({ rootfs: "lazy", volume: volumes() });
  assert.equal(r.result.status, 4);
  assert.equal(r.stdout, "ran echo hi\n");
  const d = drives(r.calls);
  assert.deepEqual(
    d.map((x) => [x.drive_id, x.is_root_device, x.is_read_only]),
    [
      ["rootfs", true, true],
      ["vol_ro", false, true],
      ["vol_rw", false, false],
    ],
  );
  assert.deepEqual(
    d.map((x) => x.path_on_host),
    [d[0].path_on_host, "ro.squashfs", "rw.ext4"],
  );
  const args = bootArgs(r.calls);
  for (const a of [
    "kindling.root=/dev/vda",
    "kindling.rootfstype=squashfs",
    "kindling.agent=vsock",
    "kindling.halt=reboot",
  ]) {
    assert.ok(args.split(" ").includes(a), `${a} in ${args}`);
  }
  assert.match(args, /kindling\.tmpfs_size=256m/);
  assert.deepEqual(
    r.seen.mounts.map((m) => `${m.kind} ${m.source} ${m.target} ${m.fstype} ${m.ro}`),
    [
      "1 /dev/vdb /.kindling/ro squashfs true",
      "1 /dev/vdc /.kindling/rw ext4 false",
      "4 /.kindling/ro/0 /ro  true",
      "4 /.kindling/rw/0 /rw  false",
      "5  /.kindling/ro  false",
      "5  /.kindling/rw  false",
      "5  /.kindling  false",
    ],
  );
  // synced back after the VM: the host's file is still there (the guest wrote nothing)
  assert.equal(await readFile(path.join(rw, "keep"), "utf8"), "host file\n");
  assert.deepEqual(await leftovers(t.home.root), []);
});

test("firecracker --rootfs squashfs: one read-only root drive holding image and mounts; --disk adds scratch", async () => {
  const r = await run({ rootfs: "squashfs", volume: volumes(), disk: "32M", user: "app" });
  assert.equal(r.result.status, 4);
  // START carries the user's supplementary groups from the image's /etc/group
  assert.deepEqual(r.seen.user, [[1000, 1000], [2000]]);
  assert.deepEqual(
    drives(r.calls).map((x) => [x.drive_id, x.path_on_host, x.is_root_device, x.is_read_only]),
    [
      ["rootfs", "rootfs.squashfs", true, true],
      ["scratch", "scratch.ext4", false, false],
    ],
  );
  assert.match(bootArgs(r.calls), /kindling\.scratch=\/dev\/vdb/);
  assert.deepEqual(r.seen.mounts, []);
  assert.deepEqual(await leftovers(t.home.root), []);
});

test("firecracker --rootfs copy: ext4 root with the ro mount baked in, rw mount as a synced drive", async () => {
  const r = await run({ rootfs: "copy", volume: volumes(), memory: "128" });
  assert.equal(r.result.status, 4);
  assert.deepEqual(
    drives(r.calls).map((x) => [x.drive_id, x.path_on_host, x.is_root_device, x.is_read_only]),
    [
      ["rootfs", "rootfs.ext4", true, true],
      ["vol_rw", "rw.ext4", false, false],
    ],
  );
  const args = bootArgs(r.calls);
  assert.match(args, /kindling\.rootfstype=ext4/);
  assert.match(args, /kindling\.tmpfs_size=64m/);
  const machine = r.calls.find((c) => c.path === "/machine-config")!;
  assert.equal(machine.body.mem_size_mib, 128);
  assert.deepEqual(
    r.seen.mounts.map((m) => `${m.kind} ${m.target}`),
    ["1 /.kindling/rw", "4 /rw", "5 /.kindling/rw", "5 /.kindling"],
  );
  assert.deepEqual(await leftovers(t.home.root), []);
});

test("firecracker --rootfs virtiofs is refused with the reason", async () => {
  await assert.rejects(
    parseRunOptions("ml", [], { runtime: "firecracker", rootfs: "virtiofs" }).then((o) => runtimeFor(o)),
    /--rootfs virtiofs does not apply to --runtime firecracker \(it supports: lazy, squashfs, copy\)/,
  );
});

test("a sync-back that cannot write to the host keeps the rw drive in $KINDLING_HOME/rescued and says so", async () => {
  const gone = path.join(t.tmp, "gone");
  await mkdir(gone);
  const r = await run({ rootfs: "lazy", volume: [`${gone}:/rw`] }, async () => {
    // the host directory is replaced by a file while the container runs: rsync cannot copy into it
    await rm(gone, { recursive: true });
    await writeFile(gone, "");
  });
  assert.equal(r.result.status, 4);
  const rescued = await readdir(path.join(t.home.root, "rescued"));
  assert.equal(rescued.length, 1);
  assert.match(rescued[0], /^[0-9a-f]{12}-rw\.ext4$/);
  assert.deepEqual(await leftovers(t.home.root), []);
});
