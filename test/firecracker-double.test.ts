/**
 * The Firecracker test double's own checks (test/helpers/fc-api-rules.ts), driven by raw API calls before
 * InstanceStart: the schema through its independent validator, and Firecracker's semantic rules beyond the
 * schema, each from Firecracker's source (docs/firecracker.md, "What the double checks").
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, before, test } from "node:test";
import { FirecrackerApi } from "../src/vm/firecracker/client.js";
import { exited, within } from "./helpers/bounded.js";
import { type Fixture, makeFixture } from "./helpers/firecracker-fixtures.js";

let fx: Fixture;
before(async () => {
  fx = await makeFixture();
});
after(() => fx.cleanup());

function canConnect(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(sock);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

let n = 0;
/** A fresh double with its API socket up; `stop` kills it and waits (bounded). */
async function double(): Promise<{
  api: FirecrackerApi;
  sock: string;
  child: ChildProcess;
  stop(): Promise<void>;
}> {
  const sock = path.join(fx.dir, `d${n++}.sock`);
  const child = spawn(fx.fakeBin, ["--api-sock", sock, "--id", "double-test"], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, FAKE_FC_GUEST_DIR: fx.guestDir },
  });
  let stderr = "";
  child.stderr!.on("data", (d) => {
    stderr += d.toString();
  });
  await within(
    (async () => {
      // bound is not yet listening: wait until a connection succeeds
      while (!(await canConnect(sock))) {
        if (child.exitCode !== null) throw new Error(`the double exited: ${stderr.trim()}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    })(),
    10_000,
    "the double's API socket",
  );
  return {
    api: new FirecrackerApi(sock),
    sock,
    child,
    async stop() {
      child.kill("SIGKILL");
      await exited(child, 5000, "the double to exit");
    },
  };
}

async function fault(api: FirecrackerApi, method: "PUT" | "PATCH", url: string, body: unknown) {
  const res = await api.request(method, url, body);
  assert.equal(res.status, 400, `${method} ${url} ${JSON.stringify(body)} should be refused`);
  return (res.body as { fault_message: string }).fault_message;
}

async function accepted(api: FirecrackerApi, url: string, body: unknown) {
  const res = await api.request("PUT", url, body);
  assert.equal(res.status, 204, `PUT ${url} ${JSON.stringify(body)}: ${JSON.stringify(res.body)}`);
}

test("schema, via the independent validator: types, required fields, unknown fields (serde deny_unknown_fields), ranges", async () => {
  const d = await double();
  try {
    assert.match(await fault(d.api, "PUT", "/machine-config", { vcpu_count: 1 }), /mem_size_mib/);
    assert.match(
      await fault(d.api, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 128, turbo: true }),
      /\/turbo is an unknown field/,
    );
    assert.match(await fault(d.api, "PUT", "/vsock", { guest_cid: 2, uds_path: "/x" }), /guest_cid/);
    assert.match(await fault(d.api, "PUT", "/frobnicate", { a: 1 }), /Invalid request method and\/or path/);
  } finally {
    await d.stop();
  }
});

test("machine-config: 1..32 vCPUs, SMT only with 1 or an even count, memory > 0 and a multiple of 2 with 2M pages", async () => {
  const d = await double();
  try {
    assert.match(
      await fault(d.api, "PUT", "/machine-config", { vcpu_count: 33, mem_size_mib: 128 }),
      /vcpu/i,
    );
    assert.match(
      await fault(d.api, "PUT", "/machine-config", { vcpu_count: 3, mem_size_mib: 128, smt: true }),
      /number of vCPUs/,
    );
    assert.match(
      await fault(d.api, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 0 }),
      /memory size/,
    );
    assert.match(
      await fault(d.api, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 129, huge_pages: "2M" }),
      /memory size/,
    );
    await accepted(d.api, "/machine-config", { vcpu_count: 2, mem_size_mib: 256, smt: true });
  } finally {
    await d.stop();
  }
});

test("drives: resource id characters, path id = body id, one root device, the file exists", async () => {
  const d = await double();
  const a = await fx.drive("a");
  const b = await fx.drive("b");
  const drive = (id: string, p: string, root: boolean) => ({
    drive_id: id,
    path_on_host: p,
    is_root_device: root,
    is_read_only: true,
  });
  try {
    assert.match(await fault(d.api, "PUT", "/drives/bad-id", drive("bad-id", a, false)), /alphanumeric/);
    assert.match(await fault(d.api, "PUT", "/drives/x", drive("y", a, false)), /does not match/);
    await accepted(d.api, "/drives/root", drive("root", a, true));
    await accepted(d.api, "/drives/root", drive("root", a, true)); // an update of the root itself
    assert.match(
      await fault(d.api, "PUT", "/drives/other", drive("other", b, true)),
      /root block device already/,
    );
    assert.match(
      await fault(d.api, "PUT", "/drives/gone", drive("gone", path.join(fx.dir, "nope"), false)),
      /Invalid block device path/,
    );
  } finally {
    await d.stop();
  }
});

test("network interfaces: path id = body id, unique host device and MAC, the TAP must exist", async () => {
  const d = await double();
  try {
    const nic = (id: string, dev: string, mac?: string) => ({
      iface_id: id,
      host_dev_name: dev,
      ...(mac ? { guest_mac: mac } : {}),
    });
    assert.match(await fault(d.api, "PUT", "/network-interfaces/eth0", nic("eth1", "lo")), /does not match/);
    // "lo" stands in for a TAP: the double checks only that the device exists
    await accepted(d.api, "/network-interfaces/eth0", nic("eth0", "lo", "06:00:00:00:00:01"));
    assert.match(
      await fault(d.api, "PUT", "/network-interfaces/eth1", nic("eth1", "lo")),
      /host device name lo is already in use/,
    );
    assert.match(
      await fault(d.api, "PUT", "/network-interfaces/eth1", nic("eth1", "kindling-no-such-tap")),
      /Cannot open TAP device/,
    );
  } finally {
    await d.stop();
  }
});

test("PUT /vsock binds uds_path at once (an existing file is refused); boot-source files must exist; nothing but actions after InstanceStart", async () => {
  const d = await double();
  try {
    const uds = path.join(fx.dir, `v${n}.sock`);
    await accepted(d.api, "/vsock", { guest_cid: 3, uds_path: uds });
    assert.ok(existsSync(uds), "the vsock socket exists right after PUT /vsock, before boot");
    const d2 = await double();
    try {
      assert.match(await fault(d2.api, "PUT", "/vsock", { guest_cid: 3, uds_path: uds }), /Address in use/);
    } finally {
      await d2.stop();
    }
    assert.match(
      await fault(d.api, "PUT", "/boot-source", { kernel_image_path: path.join(fx.dir, "no-kernel") }),
      /Kernel file cannot be opened/,
    );
    await accepted(d.api, "/boot-source", { kernel_image_path: fx.kernel, boot_args: "console=ttyS0" });
    await accepted(d.api, "/actions", { action_type: "InstanceStart" });
    assert.match(
      await fault(d.api, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 128 }),
      /not supported after starting/,
    );
  } finally {
    await d.stop();
  }
});
