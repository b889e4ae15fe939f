/** Unit tests of src/runtime/vm-rootfs and the VM run flags: no VM, no root needed. */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import { pickDefaultVmm } from "../src/doctor/index.js";
import { parseRunOptions } from "../src/runtime/options.js";
import { DriveTable, guestDiskName } from "../src/runtime/vm-rootfs/drives.js";
import { byDepth } from "../src/runtime/vm-rootfs/hostmounts.js";
import { ext4Size, parseSize } from "../src/runtime/vm-rootfs/images.js";
import { FIRECRACKER_TRAITS } from "../src/vm/firecracker/backend.js";
import { QEMU_MAX_VIRTIO_DEVICES, QEMU_TRAITS } from "../src/vm/qemu.js";

test("guest disk names follow Linux's virtio-blk scheme", () => {
  assert.deepEqual([0, 1, 25, 26, 27, 51, 52, 701, 702].map(guestDiskName), [
    "/dev/vda",
    "/dev/vdb",
    "/dev/vdz",
    "/dev/vdaa",
    "/dev/vdab",
    "/dev/vdaz",
    "/dev/vdba",
    "/dev/vdzz",
    "/dev/vdaaa",
  ]);
});

test("DriveTable: root first, names in order, QEMU's device limit counts shares and the agent port", () => {
  const t = new DriveTable();
  assert.equal(t.add("rootfs", "/r", true, true), "/dev/vda");
  assert.equal(t.add("scratch", "/s", false), "/dev/vdb");
  assert.equal(t.add("vol_ro", "/v", true), "/dev/vdc");
  assert.throws(() => t.add("root2", "/x", true, true), /root drive must be added first/);
  assert.deepEqual(
    t.drives.map((d) => [d.id, d.isRoot, d.readOnly]),
    [
      ["rootfs", true, true],
      ["scratch", false, false],
      ["vol_ro", false, true],
    ],
  );
  const full = new DriveTable();
  for (let i = 0; i < QEMU_MAX_VIRTIO_DEVICES - 1; i++) full.add(`d${i}`, "/f", true, i === 0);
  const qemu = { traits: QEMU_TRAITS };
  full.check(qemu, 0); // 22 drives + the agent port: fits
  assert.throws(
    () => full.check(qemu, 0, 0, 1),
    /22 drives, 0 shares, 1 network card and the agent's device need 24/,
  );
  assert.throws(() => full.check(qemu, 1), /too many devices for QEMU microvm: 22 drives, 1 shares/);
  full.check({ traits: FIRECRACKER_TRAITS }, 0);
});

test("sizes: --disk values, ext4 headroom", () => {
  assert.equal(parseSize("512M"), 512 << 20);
  assert.equal(parseSize("2G"), 2 * 2 ** 30);
  assert.equal(parseSize("1.5g"), 1.5 * 2 ** 30);
  assert.equal(parseSize("4096"), 4096);
  assert.equal(parseSize("lots"), undefined);
  const s = ext4Size({ bytes: 100 << 20, inodes: 1000 });
  assert.equal(s.bytes, 184 << 20);
  assert.equal(s.inodes, 3024);
});

test("bind order: parents before children", () => {
  const v = byDepth([
    { destination: "/a/b/c" },
    { destination: "/a" },
    { destination: "/a/b" },
    { destination: "/z" },
  ]);
  assert.deepEqual(
    v.map((x) => x.destination),
    ["/a", "/z", "/a/b", "/a/b/c"],
  );
});

test("run flags: --disk and --mount-packing are for VM runtimes; --runtime auto picks a VMM", async () => {
  const o = await parseRunOptions("img", [], { runtime: "qemu", disk: "1G", mountPacking: "per-mount" });
  assert.equal(o.diskBytes, 2 ** 30);
  assert.equal(o.mountPacking, "per-mount");
  await assert.rejects(
    parseRunOptions("img", [], { runtime: "qemu", disk: "1M" }),
    /--disk 1M: expected a size of at least 16M/,
  );
  await assert.rejects(
    parseRunOptions("img", [], { runtime: "runc", disk: "1G" }),
    /--disk applies to VM runtimes/,
  );
  await assert.rejects(
    parseRunOptions("img", [], { runtime: "qemu", mountPacking: "some" }),
    /--mount-packing: unknown value "some" \(expected one of: pack, per-mount\)/,
  );
  const dir = await mkdtemp(path.join(tmpdir(), "kindling-auto-"));
  const saved = process.env.KINDLING_FIRECRACKER;
  try {
    process.env.KINDLING_FIRECRACKER = path.join(dir, "no-firecracker");
    // auto stays auto while flags are parsed (no host probe then); the run picks the VMM when it starts
    assert.equal((await parseRunOptions("img", [], { runtime: "auto" })).runtime, "auto");
    assert.equal(await pickDefaultVmm(), "qemu");
  } finally {
    if (saved === undefined) delete process.env.KINDLING_FIRECRACKER;
    else process.env.KINDLING_FIRECRACKER = saved;
    await rm(dir, { recursive: true });
  }
});
