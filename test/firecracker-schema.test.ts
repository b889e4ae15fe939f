import assert from "node:assert/strict";
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { KindlingError } from "../src/util/errors.js";
import { planJail, prepareJail, renderJailerArgs } from "../src/vm/firecracker/jailer.js";
import { renderApiCalls, renderConfigFile } from "../src/vm/firecracker/render.js";
import type { VmSpec } from "../src/vm/spec.js";
import { type Fixture, makeFixture } from "./helpers/firecracker-fixtures.js";
import {
  type FirecrackerSchema,
  findSchemaFile,
  loadFirecrackerSchema,
} from "./helpers/firecracker-schema.js";

let schema: FirecrackerSchema;
let fx: Fixture;

before(async () => {
  schema = await loadFirecrackerSchema();
  fx = await makeFixture();
});
after(() => fx.cleanup());

const render = (spec: VmSpec) => ({
  vsock: { guest_cid: 3, uds_path: `${spec.stateDir}/vsock.sock` },
  logger: { log_path: `${spec.stateDir}/fc.log`, level: "Warning" as const, show_level: true },
  metrics: { metrics_path: `${spec.stateDir}/metrics.json` },
});

function specs(): Record<string, VmSpec> {
  const d = (id: string, isRoot: boolean, readOnly: boolean) => ({
    id,
    path: `/x/${id}.img`,
    isRoot,
    readOnly,
  });
  return {
    "kernel only, no drives": fx.spec({ initrdPath: undefined, drives: [] }),
    "initrd + ro root": fx.spec({ drives: [d("rootfs", true, true)] }),
    "root + ro mount + rw mount + scratch": fx.spec({
      drives: [
        d("rootfs", true, true),
        d("mount-0", false, true),
        d("mount-1", false, false),
        d("scratch", false, false),
      ],
      vcpus: 1,
      memoryMiB: 128,
    }),
    "root + a NIC (the TAP in the run's network namespace)": fx.spec({
      drives: [d("rootfs", true, true)],
      network: { netns: "/run/netns/kl-x-y", tap: "tap0", mac: "0a:58:0a:f0:00:05", mtu: 1500 },
    }),
    "no root device (initramfs finds drives itself)": fx.spec({
      drives: [d("image", false, true), d("rw", false, false)],
    }),
  };
}

test("the official schema is found beside the repository and read as Swagger 2.0", async () => {
  const file = await findSchemaFile();
  assert.match(file, /shared\/firecracker\/firecracker-v1\.16\.1\.yaml$/);
  assert.equal(schema.version, "1.16.1");
  assert.equal(schema.route("PUT", "/drives/rootfs")?.definition, "Drive");
  assert.equal(schema.route("PUT", "/boot-source")?.definition, "BootSource");
  assert.equal(schema.route("PUT", "/actions")?.definition, "InstanceActionInfo");
  assert.equal(schema.route("PUT", "/vsock")?.definition, "Vsock");
  assert.equal(schema.route("PATCH", "/drives/x")?.definition, "PartialDrive");
  assert.equal(schema.route("PUT", "/drives/a/b"), undefined);
});

test("KINDLING_FIRECRACKER_SCHEMA overrides the location, and a wrong one is a clear error", async () => {
  const old = process.env.KINDLING_FIRECRACKER_SCHEMA;
  try {
    process.env.KINDLING_FIRECRACKER_SCHEMA = "/nonexistent/fc.yaml";
    await assert.rejects(
      findSchemaFile(),
      (e: Error) =>
        e instanceof KindlingError &&
        /KINDLING_FIRECRACKER_SCHEMA/.test(e.message) &&
        /nonexistent/.test(e.message),
    );
    process.env.KINDLING_FIRECRACKER_SCHEMA = schema.file;
    assert.equal(await findSchemaFile(), schema.file);
  } finally {
    if (old === undefined) delete process.env.KINDLING_FIRECRACKER_SCHEMA;
    else process.env.KINDLING_FIRECRACKER_SCHEMA = old;
  }
});

test("every API call rendered from several VmSpecs validates against the schema", () => {
  for (const [name, spec] of Object.entries(specs())) {
    const calls = renderApiCalls(spec, render(spec));
    assert.ok(calls.length >= 5, name);
    for (const c of calls) {
      assert.deepEqual(schema.checkRequest(c.method, c.path, c.body), [], `${name}: ${c.method} ${c.path}`);
    }
    assert.deepEqual(calls.at(-1), {
      method: "PUT",
      path: "/actions",
      body: { action_type: "InstanceStart" },
    });
  }
});

test("every config file rendered from several VmSpecs validates as FullVmConfiguration", () => {
  for (const [name, spec] of Object.entries(specs())) {
    const config = renderConfigFile(spec, render(spec));
    assert.deepEqual(schema.check("FullVmConfiguration", config), [], name);
    schema.assertConfig(config);
  }
});

test("rendering: root drive first, ids Firecracker accepts, boot args for Firecracker, initrd only when given", () => {
  const spec = specs()["root + ro mount + rw mount + scratch"];
  spec.drives = [spec.drives[1], spec.drives[0], ...spec.drives.slice(2)]; // root not first in the spec
  const calls = renderApiCalls(spec, render(spec));
  const drives = calls.filter((c) => c.path.startsWith("/drives/"));
  assert.deepEqual(
    drives.map((c) => c.path),
    ["/drives/rootfs", "/drives/mount_0", "/drives/mount_1", "/drives/scratch"],
  );
  assert.deepEqual(drives[2].body, {
    drive_id: "mount_1",
    path_on_host: "/x/mount-1.img",
    is_root_device: false,
    is_read_only: false,
  });
  assert.deepEqual(drives[1].body, {
    drive_id: "mount_0",
    path_on_host: "/x/mount-0.img",
    is_root_device: false,
    is_read_only: true,
  });
  const boot = calls.find((c) => c.path === "/boot-source")!.body as {
    boot_args: string;
    initrd_path?: string;
  };
  assert.equal(
    boot.boot_args,
    "console=ttyS0 kindling.root=/dev/vda reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd kindling.halt=reboot",
  );
  assert.equal(boot.initrd_path, fx.initrd);
  const noInitrd = renderConfigFile(specs()["kernel only, no drives"], {});
  assert.equal("initrd_path" in noInitrd["boot-source"], false);
  assert.deepEqual(
    calls.map((c) => c.path).filter((p) => !p.startsWith("/drives/")),
    ["/logger", "/metrics", "/machine-config", "/boot-source", "/vsock", "/actions"],
  );
});

test("a spec's own boot args win over the Firecracker defaults", () => {
  const spec = fx.spec({ cmdline: "console=ttyS0 panic=5 kindling.halt=poweroff" });
  const boot = renderConfigFile(spec)["boot-source"];
  assert.equal(
    boot.boot_args,
    "console=ttyS0 panic=5 kindling.halt=poweroff reboot=k pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd",
  );
});

test("what Firecracker cannot do is refused before anything starts", () => {
  const d = (id: string, isRoot: boolean) => ({ id, path: "/x", isRoot, readOnly: true });
  assert.throws(
    () => renderApiCalls(fx.spec({ shares: [{ tag: "rootfs", source: "/tmp" }] })),
    /virtio-fs.*rootfs/,
  );
  assert.throws(
    () => renderApiCalls(fx.spec({ drives: [d("a", true), d("b", true)] })),
    /one root drive.*a, b/,
  );
  assert.throws(() => renderApiCalls(fx.spec({ vcpus: 33 })), /1 to 32 vCPUs/);
  assert.throws(
    () => renderApiCalls(fx.spec({ drives: [d("m-1", false), d("m_1", false)] })),
    /drive id m_1/,
  );
});

test("broken bodies fail, and the message names the field", () => {
  const cases: [string, string, unknown, RegExp][] = [
    [
      "PUT",
      "/drives/rootfs",
      { drive_id: "rootfs", path_on_host: "/x", is_root_device: "yes", is_read_only: true },
      /\/is_root_device: must be boolean/,
    ],
    [
      "PUT",
      "/drives/rootfs",
      { path_on_host: "/x", is_root_device: true },
      /missing required field 'drive_id'/,
    ],
    [
      "PUT",
      "/drives/rootfs",
      { drive_id: "rootfs", path_on_host: "/x", is_root_device: true, readonly: true },
      /unknown field 'readonly'/,
    ],
    [
      "PUT",
      "/drives/rootfs",
      { drive_id: "rootfs", is_root_device: true, io_engine: "Turbo" },
      /\/io_engine: .*Sync, Async/,
    ],
    ["PUT", "/boot-source", { boot_args: "console=ttyS0" }, /missing required field 'kernel_image_path'/],
    ["PUT", "/boot-source", { kernel_image_path: 7 }, /\/kernel_image_path: must be string/],
    ["PUT", "/machine-config", { vcpu_count: 0, mem_size_mib: 128 }, /\/vcpu_count: must be >= 1/],
    ["PUT", "/machine-config", { vcpu_count: 2 }, /missing required field 'mem_size_mib'/],
    ["PUT", "/vsock", { guest_cid: 2, uds_path: "/x" }, /\/guest_cid: must be >= 3/],
    ["PUT", "/actions", { action_type: "Reboot" }, /\/action_type: .*InstanceStart/],
    ["PUT", "/logger", { log_path: "/x", level: "Verbose" }, /\/level/],
    ["PUT", "/metrics", {}, /missing required field 'metrics_path'/],
    ["PUT", "/nonsense", {}, /not an operation of the Firecracker API/],
  ];
  for (const [method, p, body, want] of cases) {
    const errors = schema.checkRequest(method, p, body).join("; ");
    assert.match(errors, want, `${method} ${p} ${JSON.stringify(body)}`);
    assert.throws(
      () => schema.assertRequest(method, p, body),
      (e: Error) => e instanceof KindlingError && want.test(e.message),
    );
  }
  const badConfig = {
    "boot-source": { kernel_image_path: "/k" },
    drives: [{ drive_id: "a", is_root_device: 1 }],
    "machine-config": { vcpu_count: 1, mem_size_mib: 64 },
  };
  assert.throws(() => schema.assertConfig(badConfig), /\/drives\/0\/is_root_device: must be boolean/);
  assert.throws(
    () => schema.assertConfig({ "boot-source": { kernel_image_path: "/k" }, "machine-cfg": {} }),
    /unknown field 'machine-cfg'/,
  );
});

test("jailer: arguments, chroot layout, and API paths inside the jail that still validate", async () => {
  const root = await fx.drive("root");
  const rw = await fx.drive("rw");
  const spec = fx.spec({
    drives: [
      { id: "rootfs", path: root, isRoot: true, readOnly: true },
      { id: "data", path: rw, isRoot: false, readOnly: false },
    ],
  });
  const opts = {
    execFile: "/usr/bin/firecracker",
    uid: 1234,
    gid: 1234,
    chrootBaseDir: path.join(fx.dir, "jail"),
    cgroupVersion: 2 as const,
    cgroups: { "cpu.max": "50000 100000" },
  };
  const layout = planJail(spec, "vm-1", opts);
  assert.equal(layout.root, path.join(fx.dir, "jail", "firecracker", "vm-1", "root"));
  assert.deepEqual(renderJailerArgs("vm-1", opts, ["--api-sock", "/run/firecracker.socket"]), [
    "--id",
    "vm-1",
    "--exec-file",
    "/usr/bin/firecracker",
    "--uid",
    "1234",
    "--gid",
    "1234",
    "--chroot-base-dir",
    path.join(fx.dir, "jail"),
    "--cgroup-version",
    "2",
    "--cgroup",
    "cpu.max=50000 100000",
    "--",
    "--api-sock",
    "/run/firecracker.socket",
  ]);
  assert.throws(() => renderJailerArgs("vm_1", opts, []), /jailer id/);

  const { placed, undo } = await prepareJail(layout, opts, ["/logs/firecracker.log"]);
  try {
    assert.deepEqual(placed, { kernel: "link", initrd: "link", rootfs: "link", data: "link" });
    const inJail = layout.hostPath("/drives/data");
    assert.equal((await stat(inJail)).ino, (await stat(rw)).ino, "hard link, not a copy");
    assert.equal((await stat(inJail)).uid, 1234, "a rw drive belongs to the jail's uid");
    assert.equal((await stat(layout.hostPath("/logs/firecracker.log"))).uid, 1234);
    const calls = renderApiCalls(spec, {
      mapPath: (_p, _k, fileId) => layout.files.find((f) => f.id === fileId)!.inJail,
      vsock: { guest_cid: 3, uds_path: "/run/vsock.sock" },
    });
    for (const c of calls) assert.deepEqual(schema.checkRequest(c.method, c.path, c.body), []);
    const boot = calls.find((c) => c.path === "/boot-source")!.body as { kernel_image_path: string };
    assert.equal(boot.kernel_image_path, "/boot/vmlinux");
    assert.equal(await readFile(layout.hostPath(boot.kernel_image_path), "utf8"), "not really a kernel");
  } finally {
    await undo();
  }
  await assert.rejects(stat(layout.jailDir), /ENOENT/);
});

test("a VM's NIC: PUT /network-interfaces/eth0 with the TAP, the veth's MAC and MTU; a broken body names its field", () => {
  const spec = specs()["root + a NIC (the TAP in the run's network namespace)"];
  const nic = renderApiCalls(spec, render(spec)).filter((c) => c.path.startsWith("/network-interfaces/"));
  assert.deepEqual(nic, [
    {
      method: "PUT",
      path: "/network-interfaces/eth0",
      body: { iface_id: "eth0", host_dev_name: "tap0", guest_mac: "0a:58:0a:f0:00:05", mtu: 1500 },
    },
  ]);
  assert.deepEqual(renderConfigFile(spec, render(spec))["network-interfaces"], [nic[0]!.body]);
  const broken = schema.checkRequest("PUT", "/network-interfaces/eth0", { iface_id: "eth0", mtu: 10 });
  assert.ok(
    broken.some((e) => /host_dev_name/.test(e)),
    broken.join("; "),
  );
  assert.ok(
    broken.some((e) => /mtu/.test(e)),
    broken.join("; "),
  );
  assert.equal(
    renderApiCalls(specs()["initrd + ro root"]).filter((c) => c.path.includes("network")).length,
    0,
  );
});
