/**
 * The client library as a program uses it: `import { Kindling } from "kindling"` (the package's own
 * exports), against a real service and runc. What each method returns is checked against
 * api/openapi.yaml; events and metrics say what happened. The client starts the service itself.
 */
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { after, before, test } from "node:test";
import { Kindling, type KindlingApiError, type ServiceEvent } from "kindling";
import { assertMatchesApi } from "./helpers/service.js";
import { busyboxServiceHome, type ServiceTestHome } from "./helpers/service-home.js";

let t: ServiceTestHome;
let home: string;
let image: string;
let k: Kindling;

before(async () => {
  // no service: the library starts one itself
  t = await busyboxServiceHome("kindling-client-", { service: false });
  ({ root: home, image } = t);
  k = new Kindling({ home, autoStart: true, idleExitSeconds: 60 });
});

after(() => t?.done());

const json = "application/json";

test("a program drives containers through the library; answers match the OpenAPI document", async () => {
  assert.equal(await k.ping(), false, "no service yet");
  const info = await k.info(); // starts one
  await assertMatchesApi("GET", "/v1/info", 200, json, info);
  assert.equal(info.daemon.home, home);

  const events: ServiceEvent[] = [];
  const abort = new AbortController();
  const collecting = (async () => {
    for await (const e of k.events(abort.signal)) events.push(e);
  })();
  await new Promise((r) => setTimeout(r, 200)); // subscribed before the container starts

  const created = await k.createContainer({
    image,
    runtime: "runc",
    network: "none",
    name: "lib",
    command: ["sh", "-c", "echo from-lib; read line; echo got-$line; sleep 1000"],
  });
  await assertMatchesApi("POST", "/v1/containers", 201, json, created);
  const list = await k.listContainers();
  await assertMatchesApi("GET", "/v1/containers", 200, json, list);
  assert.deepEqual(
    list.map((c) => c.name),
    ["lib"],
  );
  const inspected = await k.inspectContainer("lib");
  await assertMatchesApi("GET", `/v1/containers/${created.id}`, 200, json, inspected);
  assert.equal(inspected.network?.mode, "none");

  const out = new PassThrough();
  const err = new PassThrough();
  const stdin = new PassThrough();
  stdin.end("abc\n");
  let text = "";
  out.on("data", (d) => {
    text += d;
  });
  const exit = await k.exec(
    "lib",
    { cmd: ["sh", "-c", "read x; echo exec-$x; exit 5"] },
    { stdin, stdout: out, stderr: err },
  );
  assert.deepEqual(exit, { status: 5 });
  assert.equal(text, "exec-abc\n");

  const killed = await k.kill("lib", "KILL"); // sh as PID 1 would ignore TERM
  await assertMatchesApi("POST", `/v1/containers/${created.id}/kill`, 200, json, killed);
  const waited = await k.wait("lib");
  await assertMatchesApi("POST", `/v1/containers/${created.id}/wait`, 200, json, waited);
  assert.equal(waited.exitCode, 137);
  const logs: string[] = [];
  for await (const l of k.logs("lib")) logs.push(l.data.toString());
  assert.equal(logs.join(""), "from-lib\ngot-\n", "the container's stdin is /dev/null");

  const metrics = await k.metrics();
  assert.match(metrics, /^kindling_containers\{state="exited",runtime="runc"\} 1$/m);
  assert.match(metrics, /^kindling_container_prep_ms_count\{runtime="runc"\} 1$/m);

  const removed = await k.remove("lib");
  await assertMatchesApi("DELETE", `/v1/containers/${created.id}`, 200, json, removed);
  await assert.rejects(
    k.inspectContainer("lib"),
    (e: KindlingApiError) => e.status === 404 && e.code === "ENOCONTAINER",
  );
  await new Promise((r) => setTimeout(r, 300));
  abort.abort();
  await collecting;
  for (const e of events) await assertMatchesApi("GET", "/v1/events", 200, "application/x-ndjson", [e]);
  assert.deepEqual(
    events.map((e) => `${e.type} ${e.action} ${e.name}`),
    ["container create lib", "container start lib", "container exit lib", "container remove lib"],
  );
});
