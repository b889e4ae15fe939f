/**
 * The Kindling service with real runc containers: `run -d` and the container commands through the
 * CLI, the API checked against api/openapi.yaml, exec, one service per home, and kill -9 of the
 * service with containers running, then adoption by a new service (logs across the restart, exec,
 * stop and rm on adopted containers). Afterwards nothing is left running or mounted.
 */
import assert from "node:assert/strict";
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { until } from "./helpers/bounded.js";
import { runCli } from "./helpers/cli.js";
import { leftovers } from "./helpers/leftovers.js";
import { apiCall, cli, openApi, startService, type TestService } from "./helpers/service.js";
import { busyboxServiceHome, type ServiceTestHome } from "./helpers/service-home.js";

let t: ServiceTestHome;
let home: string;
let socket: string;
let image: string;
let service: TestService;
let ids: string[];

before(async () => {
  t = await busyboxServiceHome("kindling-svc-");
  ({ root: home, socket, image, ids } = t);
  service = t.service!;
});

after(() => t?.done());

async function logsOf(ref: string): Promise<{ out: string; err: string }> {
  const r = await apiCall(socket, "GET", `/v1/containers/${ref}/logs`);
  assert.equal(r.status, 200);
  let out = "";
  let err = "";
  for (const l of r.body as { stream: string; data: string }[]) {
    if (l.stream === "stdout") out += Buffer.from(l.data, "base64").toString();
    else err += Buffer.from(l.data, "base64").toString();
  }
  return { out, err };
}

test("ping, info and metrics answer as the document says; info names the daemon's pid", async () => {
  assert.equal((await apiCall(socket, "GET", "/v1/ping")).status, 200);
  const info = await apiCall(socket, "GET", "/v1/info");
  assert.equal(info.body.daemon.pid, service.pid);
  assert.equal(info.body.daemon.socket, socket);
  assert.ok(info.body.runtimes.some((r: { name: string; usable: boolean }) => r.name === "runc" && r.usable));
  const cliInfo = await cli(home, ["info", "--json"]);
  assert.equal(cliInfo.code, 0, cliInfo.stderr);
  assert.equal(JSON.parse(cliInfo.stdout).daemon.pid, service.pid);
  const mode = (await stat(socket)).mode & 0o777;
  assert.equal(mode, 0o600, "the socket is root's only");
  const m = await apiCall(socket, "GET", "/metrics");
  assert.match(m.body, /^kindling_uptime_seconds \d/m);
});

test("run -d, ps, logs, exec, kill, wait, inspect and rm through the CLI", async () => {
  const run = await cli(home, [
    "run",
    "-d",
    "--runtime",
    "runc",
    "--name",
    "web",
    "-e",
    "GREETING=hi",
    image,
    "--",
    "sh",
    "-c",
    'echo "$GREETING out"; echo err >&2; trap "echo got USR1" USR1; while true; do sleep 0.1; done',
  ]);
  assert.equal(run.code, 0, run.stderr);
  const id = run.stdout.trim();
  assert.match(id, /^[0-9a-f]{12}$/);
  ids.push(id);

  const ps = await cli(home, ["ps", "--json"]);
  assert.equal(ps.code, 0, ps.stderr);
  const row = (JSON.parse(ps.stdout) as { id: string; name: string; status: string }[]).find(
    (c) => c.id === id,
  );
  assert.equal(row?.name, "web");
  assert.equal(row?.status, "running");
  assert.match((await cli(home, ["ps"])).stdout, /CONTAINER ID.*\n.*web/);

  await until("the first output in the log", async () => (await logsOf("web")).out.includes("hi out"));
  const logs = await cli(home, ["logs", id.slice(0, 5)]);
  assert.equal(logs.stdout, "hi out\n");
  assert.equal(logs.stderr, "err\n");

  const ex = await cli(home, [
    "exec",
    "web",
    "--",
    "sh",
    "-c",
    "echo $GREETING from exec; hostname; echo e2 >&2; exit 7",
  ]);
  assert.equal(ex.code, 7);
  assert.equal(ex.stdout, `hi from exec\n${id}\n`);
  assert.equal(ex.stderr, "e2\n");
  const exi = await cli(home, ["exec", "-i", "web", "--", "sh", "-c", "tr a-z A-Z"], "piped through stdin\n");
  assert.equal(exi.stdout, "PIPED THROUGH STDIN\n");
  assert.equal(exi.code, 0);
  // as for run: a program that is not there 127, one that cannot be run 126 (runc exec's own error)
  const missing = await cli(home, ["exec", "web", "--", "/no/such/program"]);
  assert.equal(missing.code, 127, missing.stderr);
  assert.match(missing.stderr, /^kindling: .*no such file or directory/m);
  const notExecutable = await cli(home, ["exec", "web", "--", "/etc/passwd"]);
  assert.equal(notExecutable.code, 126, notExecutable.stderr);
  // -t without a terminal here: the process still gets a pty (24x80), output merged (test/tty.test.ts drives one)
  const exTty = await cli(home, [
    "exec",
    "-t",
    "web",
    "--",
    "sh",
    "-c",
    "tty; stty size; echo e >&2; exit 3",
  ]);
  assert.equal(exTty.code, 3, exTty.stderr);
  assert.match(exTty.stdout, /^\/dev\/pts\/\d+\r\n24 80\r\ne\r\n$/);

  const kill = await cli(home, ["kill", "-s", "USR1", "web"]);
  assert.equal(kill.code, 0, kill.stderr);
  await until("the USR1 trap", async () => (await logsOf("web")).out.includes("got USR1"));

  const inspect = await apiCall(socket, "GET", `/v1/containers/${id}`);
  assert.equal(inspect.body.state.status, "running");
  assert.equal(inspect.body.network?.mode, "bridge", "inspect shows the container's network");
  assert.match(inspect.body.network?.ip ?? "", /^\d+\.\d+\.\d+\.\d+$/);

  const rmRunning = await cli(home, ["rm", "web"]);
  assert.equal(rmRunning.code, 125);
  assert.match(rmRunning.stderr, /^kindling: container .* is running: stop it first/);

  const stop = await cli(home, ["stop", "-t", "1", "web"]);
  assert.equal(stop.code, 0, stop.stderr);
  const wait = await cli(home, ["wait", "web"]);
  assert.equal(wait.stdout.trim(), "137", "sh as PID 1 ignores TERM: KILL after 1 s");
  const exited = await apiCall(socket, "GET", `/v1/containers/${id}`);
  assert.equal(exited.body.state.status, "exited");
  assert.equal(exited.body.state.stoppedBy, "request");
  const execExited = await cli(home, ["exec", "web", "--", "true"]);
  assert.equal(execExited.code, 125);
  assert.match(execExited.stderr, /not running/);
  assert.equal((await cli(home, ["ps", "-q"])).stdout, "");
  assert.match((await cli(home, ["ps", "-a"])).stdout, /Exited \(137\)/);

  const rmc = await cli(home, ["rm", "web"]);
  assert.equal(rmc.code, 0, rmc.stderr);
  assert.equal((await apiCall(socket, "GET", `/v1/containers/${id}`)).status, 404);
  assert.deepEqual(await leftovers(home, image, [id]), []);
});

test("unknown containers and bad input: 404/400 from the API, one line and 125 from the CLI", async () => {
  for (const args of [
    ["logs", "nope"],
    ["stop", "nope"],
    ["rm", "nope"],
    ["wait", "nope"],
    ["inspect", "nope"],
    ["exec", "nope", "--", "true"],
    ["kill", "nope"],
  ]) {
    const r = await cli(home, args);
    assert.equal(r.code, 125, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.stderr, "kindling: no such container: nope\n", args.join(" "));
  }
  assert.equal((await apiCall(socket, "GET", "/v1/containers/nope")).body.code, "ENOCONTAINER");
  const noImage = await apiCall(socket, "POST", "/v1/containers", {
    image: "no-such-image",
    runtime: "runc",
  });
  assert.equal(noImage.status, 404);
  const badFlag = await apiCall(socket, "POST", "/v1/containers", { image, runtime: "nope" });
  assert.equal(badFlag.status, 400);
  assert.match(badFlag.body.message, /--runtime/);
  const badSignal = await cli(home, ["kill", "-s", "NOPE", "nope"]);
  assert.equal(badSignal.code, 125);
  const badName = await apiCall(socket, "POST", "/v1/containers", {
    image,
    runtime: "runc",
    name: "bad name!",
  });
  assert.equal(badName.status, 400);
  const noRoute = await apiCall(socket, "GET", "/v1/nothing-here").catch((e) => e);
  assert.ok(noRoute instanceof Error, "an undocumented path is not in the document");
  // Nothing was created by the failures.
  assert.deepEqual((await apiCall(socket, "GET", "/v1/containers?all=true")).body, []);
});

test("a second service on the same home says one already runs, and exits", async () => {
  const second = await cli(home, ["daemon"]);
  assert.equal(second.code, 125);
  assert.match(second.stderr, /^kindling: a service already runs for /);
  assert.equal(
    (await apiCall(socket, "GET", "/v1/ping")).body.pid,
    service.pid,
    "the first one still answers",
  );
});

test("run -d --rm: the container is removed once it ends; names are unique", async () => {
  const a = await cli(home, [
    "run",
    "-d",
    "--rm",
    "--runtime",
    "runc",
    "--name",
    "once",
    image,
    "--",
    "true",
  ]);
  assert.equal(a.code, 0, a.stderr);
  const id = a.stdout.trim();
  ids.push(id);
  await until(
    "the --rm container to go",
    async () => (await apiCall(socket, "GET", `/v1/containers/${id}`)).status === 404,
  );
  const b1 = await cli(home, ["run", "-d", "--runtime", "runc", "--name", "dup", image, "--", "sleep", "30"]);
  ids.push(b1.stdout.trim());
  const b2 = await cli(home, ["run", "-d", "--runtime", "runc", "--name", "dup", image, "--", "true"]);
  assert.equal(b2.code, 125);
  assert.match(b2.stderr, /name dup is already in use/);
  assert.equal((await cli(home, ["rm", "-f", "dup"])).code, 0);
  // An attached run keeps its record (docker's habit; --rm removes it): it may have a name too.
  const attachedName = await cli(home, ["run", "--runtime", "runc", "--name", "x", image, "--", "true"]);
  assert.equal(attachedName.code, 0, attachedName.stderr);
  const x = await apiCall(socket, "GET", "/v1/containers/x");
  assert.equal(x.body.state.exitCode, 0);
  assert.equal((await cli(home, ["rm", "x"])).code, 0);
});

test("kill -9 of the service: containers keep running and logging; a new service adopts them", async () => {
  const counter = await cli(home, [
    "run",
    "-d",
    "--runtime",
    "runc",
    "--name",
    "counter",
    image,
    "--",
    "sh",
    "-c",
    'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo "line $i"; sleep 0.02; done',
  ]);
  assert.equal(counter.code, 0, counter.stderr);
  const id = counter.stdout.trim();
  ids.push(id);
  const sleeper = await cli(home, [
    "run",
    "-d",
    "--runtime",
    "runc",
    "--name",
    "sleeper",
    image,
    "--",
    "sleep",
    "1000",
  ]);
  ids.push(sleeper.stdout.trim());
  await until("output before the kill", async () => (await logsOf(id)).out.includes("line 5\n"));

  await service.kill9();
  const before = (await readFile(path.join(home, "containers", id, "log.jsonl"), "utf8")).length;
  await sleep(1000); // written while no service runs
  const during = (await readFile(path.join(home, "containers", id, "log.jsonl"), "utf8")).length;
  assert.ok(during > before, "the supervisor kept writing the log while no service ran");

  t.service = service = await startService(home);
  await until("the adoption log line", async () =>
    /"adopted":\["[0-9a-f]{12}","[0-9a-f]{12}"\]/.test(service.output()),
  );
  const ps = await apiCall(socket, "GET", "/v1/containers");
  assert.deepEqual(
    (ps.body as { name: string; status: string }[]).map((c) => `${c.name} ${c.status}`).sort(),
    ["counter running", "sleeper running"],
  );
  const ex = await cli(home, ["exec", "counter", "--", "echo", "adopted exec"]);
  assert.equal(ex.stdout, "adopted exec\n");
  assert.equal(ex.code, 0);

  // Every line, in order, across the restart; `logs -f` ends when the container does.
  const following = cli(home, ["logs", "-f", "counter"]);
  await sleep(300);
  await cli(home, ["stop", "-t", "0", "counter"]);
  const followed = await following;
  assert.equal(followed.code, 0, followed.stderr);
  const lines = (await logsOf(id)).out.split("\n").filter(Boolean);
  assert.equal(followed.stdout, `${lines.join("\n")}\n`);
  assert.ok(lines.length > 50, `${lines.length} lines`);
  for (const [i, l] of lines.entries()) assert.equal(l, `line ${i + 1}`);

  // The new service learned of the exit: wait answers, events said so.
  const wait = await apiCall(socket, "POST", `/v1/containers/${id}/wait`);
  assert.equal(wait.body.exitCode, 137);
  const rm1 = await cli(home, ["rm", "-f", "sleeper"]);
  assert.equal(rm1.code, 0, rm1.stderr);
  assert.equal((await cli(home, ["rm", "counter"])).code, 0);
  assert.deepEqual(await leftovers(home, image, ids), []);
});

test("a killed supervisor: its container shows exited 125 naming it, and rm releases everything", async () => {
  const r = await cli(home, [
    "run",
    "-d",
    "--runtime",
    "runc",
    "--network",
    "none",
    image,
    "--",
    "sleep",
    "1000",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const id = r.stdout.trim();
  ids.push(id);
  const before = await apiCall(socket, "GET", `/v1/containers/${id}`);
  assert.equal(before.body.state.status, "running");
  process.kill(before.body.state.supervisorPid, "SIGKILL");
  await until(
    "the container to show as exited",
    async () => (await apiCall(socket, "GET", `/v1/containers/${id}`)).body.state.status === "exited",
  );
  const after = await apiCall(socket, "GET", `/v1/containers/${id}`);
  assert.equal(after.body.state.exitCode, 125);
  assert.equal(after.body.state.error, "the container's supervisor died");
  // what it held is still there: nobody released it
  assert.ok((await leftovers(home, image, [id])).length > 0, "the dead supervisor's run is left");
  const rmc = await cli(home, ["rm", id]);
  assert.equal(rmc.code, 0, rmc.stderr);
  assert.deepEqual(await leftovers(home, image, [id]), []);
});

test("attach through the API: frames, the AttachExit; the container's settings pinned from the request", async () => {
  const created = await apiCall(socket, "POST", "/v1/containers", {
    image,
    runtime: "runc",
    network: "none",
    command: ["sh", "-c", "echo out; echo err >&2; exit 6"],
    attach: true,
    environment: { KINDLING_FETCH_RETRIES: "7" },
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.id as string;
  ids.push(id);
  // its settings: the request's environment, resolved, readable by root only
  const file = path.join(home, "containers", id, "settings.json");
  assert.equal((await stat(file)).mode & 0o777, 0o600);
  assert.equal(JSON.parse(await readFile(file, "utf8")).fetchRetries, 7);
  let out = "";
  let err = "";
  const sink = (add: (s: string) => void) =>
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        add(chunk.toString());
        cb();
      },
    });
  const session = await service.client.attach(id, {
    stdout: sink((s) => {
      out += s;
    }),
    stderr: sink((s) => {
      err += s;
    }),
  });
  const exit = await session.exit;
  assert.equal(exit.status, 6);
  assert.equal(out, "out\n");
  assert.equal(err, "err\n");
  const { ajv } = await openApi();
  const validate = ajv.getSchema("openapi#/components/schemas/AttachExit")!;
  assert.ok(validate(exit), ajv.errorsText(validate.errors));
  // ended: no second attach
  await assert.rejects(service.client.attach(id), /has ended/);
  const bad = await apiCall(socket, "POST", "/v1/containers", {
    image,
    runtime: "runc",
    environment: { KINDLING_FETCH_RETRIES: "many" },
  });
  assert.equal(bad.status, 400);
  assert.match(bad.body.message, /^KINDLING_FETCH_RETRIES: invalid value "many"/);
  assert.equal((await cli(home, ["rm", id])).code, 0);
});

test("a supervisor whose container ended takes the next one with the same settings; other settings get another", async () => {
  const metric = async (name: string) => {
    const m = (await apiCall(socket, "GET", "/metrics")).body as string;
    return Number(new RegExp(`^${name} (\\d+)$`, "m").exec(m)?.[1] ?? Number.NaN);
  };
  const runOne = async (env: Record<string, string> = {}) => {
    const r = await runCli(
      ["run", "-d", "--runtime", "runc", "--network", "none", image, "--", "sh", "-c", "echo $$"],
      { home, env: { KINDLING_SOCKET: "", ...env } },
    );
    assert.equal(r.code, 0, r.stderr);
    const id = r.stdout.trim();
    ids.push(id);
    assert.equal((await apiCall(socket, "POST", `/v1/containers/${id}/wait`)).body.exitCode, 0);
    return {
      id,
      supervisor: (await apiCall(socket, "GET", `/v1/containers/${id}`)).body.state.supervisorPid,
    };
  };
  const idle = () => metric('kindling_supervisors_ready\\{kind="reused"\\}');
  // an idle supervisor waits at nice 10 (it said "idle" just before); supervising, at 0
  const niceOf = async (pid: number) =>
    Number((await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]!.split(" ")[16]);
  const a = await runOne();
  await until("the first supervisor to say it is idle", async () => (await niceOf(a.supervisor)) === 10);
  await until("the service to know it", async () => (await idle()) >= 1);
  const reusedBefore = await metric("kindling_supervisors_reused_total");
  const b = await runOne();
  assert.equal(b.supervisor, a.supervisor, "the same supervisor process ran the next container");
  assert.equal(await metric("kindling_supervisors_reused_total"), reusedBefore + 1);
  assert.equal((await logsOf(b.id)).out, "1\n", "the second container ran, with its own log");
  await until("the supervisor to be idle again", async () => (await niceOf(a.supervisor)) === 10);
  // another setting (not the trace file): never a supervisor that ran a container with other settings
  const c = await runOne({ KINDLING_LAZY_IDLE_MS: "123456" });
  assert.notEqual(c.supervisor, a.supervisor);
  for (const x of [a, b, c]) assert.equal((await cli(home, ["rm", x.id])).code, 0);
});
