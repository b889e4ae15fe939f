/**
 * Firecracker snapshots (src/vm/firecracker/snapshot.ts) against the test double, which validates every
 * body against firecracker-v1.16.1.yaml and enforces the order Firecracker does: create only when paused,
 * load only on a fresh process, drives patched after the load and before the resume.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { after, before, test } from "node:test";
import {
  createFirecrackerSnapshot,
  type FirecrackerSnapshotFiles,
  renderSnapshotCreate,
  renderSnapshotLoad,
} from "../src/vm/firecracker/snapshot.js";
import { startFirecrackerVm } from "../src/vm/firecracker/vm.js";
import { within } from "./helpers/bounded.js";
import { alive, type Fixture, makeFixture } from "./helpers/firecracker-fixtures.js";
import { type FirecrackerSchema, loadFirecrackerSchema } from "./helpers/firecracker-schema.js";

let fx: Fixture;
let schema: FirecrackerSchema;
const savedEnv = { ...process.env };

before(async () => {
  fx = await makeFixture();
  schema = await loadFirecrackerSchema();
});
after(async () => {
  process.env = savedEnv;
  await fx.cleanup();
});

function fakeEnv(vars: Record<string, string>): void {
  for (const k of Object.keys(process.env)) if (k.startsWith("FAKE_FC_")) delete process.env[k];
  process.env.FAKE_FC_GUEST_DIR = fx.guestDir;
  Object.assign(process.env, vars);
}

async function records(
  file: string,
): Promise<{ method?: string; path?: string; body?: unknown; status?: number }[]> {
  return (await readFile(file, "utf8"))
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l))
    .filter((r) => r.method);
}

/** The double's "guest" agent endpoint: resolves each connection the restored guest makes. */
async function agentEndpoint(): Promise<{ next: () => Promise<net.Socket>; close(): void }> {
  const server = net.createServer();
  server.listen(path.join(fx.guestDir, "connect_1024.sock"));
  await once(server, "listening");
  return {
    next: () =>
      within(
        once(server, "connection").then(([s]) => s as net.Socket),
        10_000,
        "the guest's agent to connect",
      ),
    close: () => server.close(),
  };
}

test("create on a paused VM, load on a fresh one with this VM's drives, vsock and TAP-less config, resume", async () => {
  const record = path.join(fx.dir, "snap.jsonl");
  fakeEnv({ FAKE_FC_RECORD: record, FAKE_FC_GUEST_CONNECT: "1024" });
  const agent = await agentEndpoint();
  const root1 = await fx.drive("snap-root1");
  const spec1 = fx.spec({ drives: [{ id: "rootfs", path: root1, isRoot: true, readOnly: true }] });
  const files: FirecrackerSnapshotFiles = {
    snapshotPath: path.join(fx.dir, "vm.snap"),
    memPath: path.join(fx.dir, "vm.mem"),
  };
  const first = await startFirecrackerVm(spec1, { firecrackerBin: fx.fakeBin, id: "snap1" });
  try {
    const guest1 = agent.next();
    await first.agentStream();
    await guest1;
    // create needs a paused VM: the double refuses it otherwise, as Firecracker does
    await assert.rejects(
      first.api.put("/snapshot/create", { snapshot_path: files.snapshotPath, mem_file_path: files.memPath }),
      /must be paused/,
    );
    await createFirecrackerSnapshot(first.api, files);
  } finally {
    await first.close();
    agent.close();
  }
  const created = (await records(record)).slice(-3);
  assert.deepEqual(
    created.map((r) => `${r.method} ${r.path} ${r.status}`),
    ["PATCH /vm 204", "PUT /snapshot/create 204", "PATCH /vm 204"],
  );

  // the restore: another container's root file behind the same drive
  const agent2 = await agentEndpoint();
  const root2 = await fx.drive("snap-root2");
  const spec2 = fx.spec({ drives: [{ id: "rootfs", path: root2, isRoot: true, readOnly: true }] });
  const before = (await records(record)).length;
  const guest2 = agent2.next();
  const second = await startFirecrackerVm(spec2, {
    firecrackerBin: fx.fakeBin,
    id: "snap2",
    snapshotLoad: files,
  });
  try {
    await second.agentStream();
    await guest2; // the restored guest's agent reconnected over the overridden vsock socket
    const calls = (await records(record)).slice(before);
    assert.deepEqual(
      calls.map((r) => `${r.method} ${r.path} ${r.status}`),
      [
        "PUT /logger 204",
        "PUT /metrics 204",
        "PUT /snapshot/load 204",
        "PATCH /drives/rootfs 204",
        "PATCH /vm 204",
      ],
    );
    assert.deepEqual(calls[2].body, {
      snapshot_path: files.snapshotPath,
      mem_backend: { backend_type: "File", backend_path: files.memPath },
      resume_vm: false,
      vsock_override: { uds_path: path.join(spec2.stateDir, "vsock.sock") },
    });
    assert.deepEqual(calls[3].body, { drive_id: "rootfs", path_on_host: root2 });
    assert.deepEqual(calls[4].body, { state: "Resumed" });
    const config = (await second.api.get("/vm/config")) as { drives: { path_on_host: string }[] };
    assert.equal(config.drives[0].path_on_host, root2, "the loaded VM reads this container's root");
    assert.match(await readFile(second.paths.console, "utf8"), /restored from a snapshot/);
  } finally {
    await second.close();
    agent2.close();
  }
  assert.equal(alive(second.pid), false);
});

test("the create and load calls validate against the v1.16.1 schema (the ajv path), with a NIC override", () => {
  const spec = fx.spec({
    drives: [
      { id: "rootfs", path: "/r.img", isRoot: true, readOnly: true },
      { id: "scratch", path: "/s.img", isRoot: false, readOnly: false },
    ],
    network: { netns: "/run/netns/x", tap: "tap-kx", mac: "02:00:00:00:00:01", mtu: 1500 },
  });
  const calls = renderSnapshotLoad(
    spec,
    { snapshotPath: "/s/vm.snap", memPath: "/s/vm.mem" },
    { vsock: { guest_cid: 3, uds_path: "/v.sock" } },
  );
  const create = renderSnapshotCreate({ snapshotPath: "/s/vm.snap", memPath: "/s/vm.mem" });
  for (const c of [...create, ...calls])
    assert.deepEqual(schema.checkRequest(c.method, c.path, c.body), [], `${c.method} ${c.path}`);
  assert.deepEqual((calls[0].body as { network_overrides: unknown }).network_overrides, [
    { iface_id: "eth0", host_dev_name: "tap-kx" },
  ]);
  assert.deepEqual(
    calls.map((c) => `${c.method} ${c.path}`),
    ["PUT /snapshot/load", "PATCH /drives/rootfs", "PATCH /drives/scratch", "PATCH /vm"],
  );
});

test("a snapshot is only loaded into a fresh process: the double refuses it after boot resources", async () => {
  fakeEnv({});
  const vm = await startFirecrackerVm(fx.spec(), { firecrackerBin: fx.fakeBin, id: "snap3" });
  try {
    const res = await vm.api.request("PUT", "/snapshot/load", {
      snapshot_path: path.join(fx.dir, "vm.snap"),
      mem_backend: { backend_type: "File", backend_path: path.join(fx.dir, "vm.mem") },
    });
    assert.equal(res.status, 400);
    assert.match(JSON.stringify(res.body), /not allowed after configuring boot-specific resources/);
  } finally {
    await vm.close();
  }
});
