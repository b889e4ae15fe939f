/**
 * Kindling's own guest kernel (guest/kernel/kindling.config, built by scripts/fixtures/guest-kernel.sh
 * with `kindling kernel build`) under real QEMU VMs: the four rootfs strategies, both agent channels,
 * virtio-net on the CNI bridge (devices from the command line: its ACPI cannot load microvm's tables, so the
 * Firecracker-shaped profile, ACPI-only, is not covered yet; docs/vm-start.md). The rest of the VM suite boots Debian's kernel; this file is the small second-kernel set.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { after, before, test } from "node:test";
import { withConfig } from "../src/config/index.js";
import { importImage } from "../src/image/import.js";
import type { RawRunFlags } from "../src/runtime/options.js";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import { leftovers } from "./helpers/leftovers.js";
import { networkLeftovers } from "./helpers/network.js";
import { runPiped } from "./helpers/run.js";
import { builtKernelHome, type VmTestHome } from "./helpers/vm-image.js";

let t: VmTestHome;

before(async () => {
  t = await builtKernelHome();
});

after(async () => {
  if (!t) return;
  await cleanupStaleRuns(t.home).catch(() => {});
  const left = [...(await leftovers(t.home.root)), ...(await networkLeftovers(t.home))];
  await t.cleanup();
  assert.deepEqual(left, []);
});

/** One run with KINDLING_GUEST_KERNEL=built: a missing built kernel fails instead of falling back. */
async function run(command: string[], flags: RawRunFlags, image = "ml") {
  return withConfig({ guestKernel: "built" }, () =>
    runPiped({ home: t.home, image, command, flags: { runtime: "qemu", ...flags }, notify: () => {} }),
  );
}

for (const rootfs of ["lazy", "squashfs", "copy", "virtiofs"] as const) {
  test(`built kernel, --rootfs ${rootfs}: the image's layers, a writable overlay, no modules loaded`, async () => {
    const r = await run(
      [
        "/bin/sh",
        "-c",
        "cat /data/hello /data/layer2; echo w > /tmp/w && cat /tmp/w; [ -e /proc/modules ] && echo modules || echo no modules",
      ],
      { rootfs, network: "none" },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "hello from layer 2\nfrom layer 2\nw\nno modules\n");
  });
}

test("built kernel, --agent serial (virtio-console)", async () => {
  const r = await run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], {
    rootfs: "squashfs",
    agent: "serial",
    network: "none",
  });
  assert.equal(r.status, 3);
  assert.equal(r.stdout, "out\n");
  assert.equal(r.stderr, "err\n");
});

test("built kernel, virtio-net: eth0 on the home's CNI bridge", async () => {
  const r = await run(["/bin/sh", "-c", "ip -o -4 addr show eth0"], {
    rootfs: "squashfs",
    network: "bridge",
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /eth0\s+inet 10\.\d+\.\d+\.\d+\/24/);
});

test("built kernel reads an lz4 block image (KINDLING_BLOCK_COMPRESSION=lz4): --rootfs lazy and squashfs", async () => {
  // The same layout as "ml" (vmTestHome leaves it in its tmp), built with lz4.
  await withConfig({ blockCompression: "lz4" }, () =>
    importImage(t.home, `${path.join(t.tmp, "layout")}:latest`, { name: "ml-lz4", progress: false }),
  );
  for (const rootfs of ["lazy", "squashfs"] as const) {
    const r = await run(
      ["/bin/sh", "-c", "cat /data/hello; wc -c < /data/big | tr -d ' '"],
      { rootfs, network: "none" },
      "ml-lz4",
    );
    assert.equal(r.status, 0, `${rootfs}: ${r.stderr}`);
    assert.equal(r.stdout, `hello from layer 2\n${8 << 20}\n`, rootfs);
  }
});
