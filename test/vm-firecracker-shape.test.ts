/**
 * Every guest-side step of a Firecracker run, for real, in a Firecracker-shaped QEMU VM (QemuBootOptions
 * profile "firecracker": virtio-mmio devices only in ACPI, serial + i8042 as the only legacy devices, no RTC,
 * Firecracker's boot arguments, the reboot ending, the vsock agent over hybrid vsock, drives in Firecracker's
 * order). What still differs from Firecracker itself is listed in docs/firecracker.md.
 */
import assert from "node:assert/strict";
import { chmod, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import type { RawRunFlags } from "../src/runtime/options.js";
import { VmRuntime } from "../src/runtime/vm-runtime.js";
import { exec } from "../src/util/exec.js";
import { prepareGuestBoot } from "../src/vm/kernel.js";
import { bootQemuVm } from "../src/vm/qemu.js";
import { within } from "./helpers/bounded.js";
import { buildBusyboxTree } from "./helpers/images.js";
import { leftovers } from "./helpers/leftovers.js";
import { runPiped } from "./helpers/run.js";
import { type VmTestHome, vmTestHome } from "./helpers/vm-image.js";

let t: VmTestHome;
let ro: string;
let rw: string;

before(async () => {
  t = await vmTestHome();
  ro = path.join(t.tmp, "ro");
  rw = path.join(t.tmp, "rw");
  await mkdir(ro);
  await mkdir(rw);
  await chmod(rw, 0o777);
  await writeFile(path.join(ro, "data"), "read-only data\n");
});

after(async () => {
  assert.deepEqual(await leftovers(t.home.root), []);
  await t.cleanup();
});

async function run(command: string[], flags: RawRunFlags) {
  const r = await runPiped({
    home: t.home,
    image: "ml",
    command,
    flags: { runtime: "qemu", network: "none", ...flags },
    runtime: new VmRuntime("qemu", "firecracker"),
  });
  assert.deepEqual(await leftovers(t.home.root), [], "nothing left after the run");
  return r;
}

// What the guest sees: Firecracker's boot args (Kindling's own panic=-1 wins over panic=1, as in render.ts) and the vsock agent on the command line, no RTC, ACPI
// tables that describe the virtio-mmio devices (LNRO0005), none of them on the command line.
const FACTS =
  "cat /proc/cmdline; ls /sys/class/rtc | wc -l; test -e /sys/firmware/acpi/tables/DSDT && echo dsdt; " +
  "ls /sys/bus/platform/devices | grep -c LNRO0005";

for (const strategy of ["lazy", "squashfs", "copy"] as const) {
  test(`--rootfs ${strategy} with ro and rw bind mounts in the Firecracker-shaped VM`, async () => {
    await rm(path.join(rw, "out"), { force: true });
    const script = `cat /data/hello /ro/data; echo "by ${strategy}" > /rw/out; ${FACTS}`;
    const r = await run(["/bin/sh", "-c", script], {
      rootfs: strategy,
      volume: [`${ro}:/ro:ro`, `${rw}:/rw`],
    });
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trimEnd().split("\n");
    assert.deepEqual(lines.slice(0, 2), ["hello from layer 2", "read-only data"]);
    const cmdline = lines[2];
    for (const arg of [
      "reboot=k",
      "panic=-1",
      "pci=off",
      "i8042.nomux",
      "kindling.halt=reboot",
      "kindling.agent=vsock",
    ])
      assert.ok(cmdline.split(" ").includes(arg), `${arg} in ${cmdline}`);
    assert.doesNotMatch(cmdline, /virtio_mmio\.device=/, "devices come from ACPI, not the command line");
    assert.equal(lines[3], "0", "no RTC");
    assert.equal(lines[4], "dsdt");
    assert.ok(
      Number(lines[5]) >= 2,
      `virtio-mmio devices (root drive + vsock at least) in ACPI: ${lines[5]}`,
    );
    const out = await readFile(path.join(rw, "out"), "utf8").catch(() => undefined);
    if (strategy === "squashfs") assert.equal(out, undefined);
    else assert.equal(out, `by ${strategy}\n`);
  });
}

test("the reboot ending: POWEROFF makes the guest reboot (i8042 reset) and QEMU exits 0 by itself", async () => {
  const boot = await prepareGuestBoot(t.home, { boot: { tmpfsSize: "32m", agent: "vsock", halt: "reboot" } });
  const tree = path.join(t.tmp, "tree");
  await buildBusyboxTree(tree);
  const image = path.join(t.tmp, "root.sqfs");
  await exec("mksquashfs", [tree, image, "-noappend", "-quiet"]);
  const vm = await bootQemuVm(
    {
      ...boot,
      memoryMiB: 128,
      vcpus: 1,
      drives: [{ id: "root", path: image, readOnly: true, isRoot: true }],
      shares: [],
      stateDir: path.join(t.tmp, "reboot"),
    },
    { home: t.home, agent: "vsock", profile: "firecracker" },
  );
  try {
    vm.agent.powerOff();
    const exit = await within(vm.wait(), 30_000, "QEMU to exit after the guest's reboot");
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.match(await vm.consoleTail(5), /reboot|Restarting/i);
  } finally {
    await vm.close();
  }
});
