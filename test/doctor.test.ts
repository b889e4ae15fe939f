import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { locate } from "../src/doctor/checks.js";
import { type DoctorReport, pickDefaultVmm, runDoctor } from "../src/doctor/report.js";
import { kvmFacts, kvmFlavor, PROBE_EXIT_CODE, probeAccel, probeFirmware } from "../src/host/kvm.js";
import { exec } from "../src/util/exec.js";
import { findExecutable } from "../src/vm/firecracker/process.js";
import { type Fixture, makeFixture } from "./helpers/firecracker-fixtures.js";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const kindling = path.join(repo, "bin", "kindling");
const RUNTIMES = ["runc", "runsc", "qemu-kvm", "qemu-tcg", "firecracker"];

let fx: Fixture;
let tmp: string;
before(async () => {
  fx = await makeFixture();
  tmp = await mkdtemp(path.join(os.tmpdir(), "kdoc-"));
});
after(async () => {
  await fx.cleanup();
  await rm(tmp, { recursive: true, force: true });
});

/** The CLI with a private KINDLING_HOME and the given extra environment. */
function doctor(args: string[], env: Record<string, string> = {}) {
  return exec(kindling, ["doctor", ...args], { env: { ...process.env, KINDLING_HOME: tmp, ...env } });
}

test("kindling doctor --json reports every runtime, and firecracker as unavailable here with a reason", async () => {
  const { stdout } = await doctor(["--json"]);
  const report = JSON.parse(stdout) as DoctorReport;
  assert.deepEqual(
    report.runtimes.map((r) => r.runtime),
    RUNTIMES,
  );
  for (const r of report.runtimes) {
    assert.equal(typeof r.usable, "boolean");
    assert.ok(r.reason.length > 0, `${r.runtime} has a reason`);
  }
  const fc = report.runtimes.find((r) => r.runtime === "firecracker")!;
  if (!(await findExecutable("firecracker"))) {
    assert.equal(fc.usable, false);
    assert.match(fc.reason, /firecracker is not installed or not on PATH \(set KINDLING_FIRECRACKER\)/);
    assert.equal(report.defaultVmm, "qemu");
  }
  // Firecracker and QEMU-with-KVM need the same thing from /dev/kvm.
  const kvm = report.runtimes.find((r) => r.runtime === "qemu-kvm")!;
  if (!report.kvm.usable) {
    assert.equal(kvm.usable, false);
    assert.ok(fc.reason.includes(report.kvm.detail));
  }
  for (const name of [
    "/dev/kvm",
    "/dev/vhost-vsock",
    "virtiofsd",
    "/dev/fuse",
    "loop devices",
    "mksquashfs",
    "guest kernel",
    "CNI plugins",
  ]) {
    assert.ok(
      report.checks.some((c) => c.name === name),
      `check ${name}`,
    );
  }
});

test("the table names each runtime and says why not", async () => {
  const { stdout } = await doctor([]);
  for (const label of ["runc", "runsc (gVisor)", "qemu (kvm)", "qemu (tcg)", "firecracker"]) {
    assert.match(stdout, new RegExp(`^${label.replace(/[()]/g, "\\$&")}\\s+(yes|no)\\s+\\S`, "m"), label);
  }
  assert.match(stdout, /^default VMM for `kindling run`: (qemu|firecracker)/m);
});

test("with a firecracker binary (the test double) doctor reports its version; usability then rests on KVM", async () => {
  const { stdout } = await doctor(["--json"], { KINDLING_FIRECRACKER: fx.fakeBin });
  const report = JSON.parse(stdout) as DoctorReport;
  const check = report.checks.find((c) => c.name === "firecracker")!;
  assert.equal(check.ok, true);
  assert.match(check.detail, /^Firecracker v1\.16\.1 /);
  const fc = report.runtimes.find((r) => r.runtime === "firecracker")!;
  const kernel = report.checks.find((c) => c.name === "guest kernel")!;
  assert.equal(fc.usable, report.kvm.usable && kernel.ok);
});

test("pickDefaultVmm: QEMU without a firecracker binary; otherwise whatever KVM allows", async () => {
  const old = process.env.KINDLING_FIRECRACKER;
  try {
    process.env.KINDLING_FIRECRACKER = path.join(tmp, "missing");
    assert.equal(await pickDefaultVmm(), "qemu");
    process.env.KINDLING_FIRECRACKER = fx.fakeBin;
    const kvm = await kvmFacts({ qemu: await locate("qemu-system-x86_64") });
    assert.equal(await pickDefaultVmm(), kvm.usable ? "firecracker" : "qemu");
    const report = await runDoctor();
    assert.equal(report.defaultVmm, await pickDefaultVmm());
  } finally {
    if (old === undefined) delete process.env.KINDLING_FIRECRACKER;
    else process.env.KINDLING_FIRECRACKER = old;
  }
});

test("KVM flavour and facts come from /sys/module and the device, without ioctls", async () => {
  const sys = path.join(tmp, "sys");
  await mkdir(path.join(sys, "kvm_pvm"), { recursive: true });
  assert.equal(await kvmFlavor(sys), "pvm");
  const pvm = await kvmFacts({ dev: "/dev/null", sysModule: sys });
  assert.deepEqual([pvm.present, pvm.accessible, pvm.usable], [true, true, false]);
  assert.match(pvm.detail, /kvm_pvm \(PVM\).*stock kernels/);
  await mkdir(path.join(sys, "kvm_intel"));
  assert.equal(await kvmFlavor(sys), "intel");
  const none = await kvmFacts({ dev: path.join(tmp, "no-kvm") });
  assert.deepEqual([none.present, none.usable], [false, false]);
  assert.match(none.detail, /does not exist/);
});

test("the probe VM reaches 64-bit mode and exits with its code (checked under TCG)", async (t) => {
  const qemu = await locate("qemu-system-x86_64");
  if (!qemu) return t.skip("no QEMU");
  const fw = probeFirmware();
  assert.equal(fw.length, 65536);
  assert.deepEqual(
    [...fw.subarray(0xfff0, 0xfff5)],
    [0xea, 0x00, 0x00, 0x00, 0xf0],
    "reset vector: ljmp F000:0000",
  );
  const res = await probeAccel("tcg", { qemu, timeoutMs: 10_000 });
  assert.equal(res.ok, true, res.detail);
  assert.equal(PROBE_EXIT_CODE, 85);
});

test("doctor: the CNI check names what --network bridge would miss", async () => {
  const { cniCheck } = await import("../src/doctor/checks.js");
  assert.equal((await cniCheck()).ok, true);
  const missing = await cniCheck(["/nonexistent"]);
  assert.equal(missing.ok, false);
  assert.match(missing.detail, /^missing bridge, host-local, portmap \(apt-get .*--network bridge will fail/);
});
