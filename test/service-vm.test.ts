/**
 * The service with real QEMU microVMs (TCG here): `run -d --runtime qemu`, exec into the VM (stdout,
 * stderr, stdin, status) through the guest agent, kill -9 of the service while the VM runs, adoption
 * by a new service (logs across the restart, exec, stop, rm), and nothing left afterwards.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { until as untilTrue } from "./helpers/bounded.js";
import { leftovers } from "./helpers/leftovers.js";
import { apiCall, cli, startService, type TestService } from "./helpers/service.js";
import { type ServiceTestHome, vmServiceHome } from "./helpers/service-home.js";

let t: ServiceTestHome;
let home: string;
let socket: string;
let service: TestService;

before(async () => {
  t = await vmServiceHome();
  ({ root: home, socket } = t);
  service = t.service!;
});

after(() => t?.done());

const until = (what: string, check: () => Promise<boolean>, ms = 60_000) => untilTrue(what, check, ms, 100);

async function stdoutOf(id: string): Promise<string> {
  const r = await apiCall(socket, "GET", `/v1/containers/${id}/logs`);
  return (r.body as { stream: string; data: string }[])
    .filter((l) => l.stream === "stdout")
    .map((l) => Buffer.from(l.data, "base64").toString())
    .join("");
}

test("a VM container: run -d, exec (output, stdin, status), kill -9 of the service, adoption, stop, rm", async () => {
  const run = await cli(home, [
    "run",
    "-d",
    "--runtime",
    "qemu",
    "--network",
    "none",
    "--name",
    "vm1",
    "ml",
    "--",
    "sh",
    "-c",
    'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo "tick $i"; sleep 0.1; done',
  ]);
  assert.equal(run.code, 0, run.stderr);
  const id = run.stdout.trim();
  const inspect = await apiCall(socket, "GET", `/v1/containers/${id}`);
  assert.equal(inspect.body.runtime, "qemu");
  assert.equal(inspect.body.state.status, "running");
  assert.ok(inspect.body.state.bootMs > 0, "the VM's boot time is recorded");
  await until("output from the VM", async () => (await stdoutOf(id)).includes("tick 3\n"));

  const ex = await cli(home, [
    "exec",
    "vm1",
    "--",
    "sh",
    "-c",
    "cat /data/layer2; echo to-stderr >&2; exit 4",
  ]);
  assert.equal(ex.code, 4, ex.stderr);
  assert.equal(ex.stdout, "from layer 2\n");
  assert.equal(ex.stderr, "to-stderr\n");
  const exi = await cli(home, ["exec", "-i", "vm1", "--", "sh", "-c", "wc -c"], "twelve bytes");
  assert.equal(exi.stdout.trim(), "12");
  const missing = await cli(home, ["exec", "vm1", "--", "/no/such"]);
  assert.equal(missing.code, 127);

  await service.kill9();
  const logPath = path.join(home, "containers", id, "log.jsonl");
  const before = (await readFile(logPath, "utf8")).length;
  await until(
    "log lines written while no service runs",
    async () => (await readFile(logPath, "utf8")).length > before,
  );
  t.service = service = await startService(home);
  const ps = await apiCall(socket, "GET", "/v1/containers");
  assert.deepEqual(
    (ps.body as { id: string; status: string }[]).map((c) => `${c.id} ${c.status}`),
    [`${id} running`],
  );
  const adoptedExec = await cli(home, ["exec", "vm1", "--", "cat", "/data/hello"]);
  assert.equal(adoptedExec.stdout, "hello from layer 2\n");
  assert.equal(adoptedExec.code, 0);

  const stop = await cli(home, ["stop", "-t", "2", "vm1"]);
  assert.equal(stop.code, 0, stop.stderr);
  const lines = (await stdoutOf(id)).split("\n").filter(Boolean);
  assert.ok(lines.length > 5, `${lines.length} lines`);
  for (const [i, l] of lines.entries())
    assert.equal(l, `tick ${i + 1}`, "every line, in order, across the restart");
  const wait = await apiCall(socket, "POST", `/v1/containers/${id}/wait`);
  assert.ok(wait.body.exitCode === 143 || wait.body.exitCode === 137, `status ${wait.body.exitCode}`);
  const rm = await cli(home, ["rm", "vm1"]);
  assert.equal(rm.code, 0, rm.stderr);
  // The service keeps the image's lazy daemon warm while it runs; stopped, it lets go of it.
  await service.stop();
  assert.deepEqual(await leftovers(home), []);
});
