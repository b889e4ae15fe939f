import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, open, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import { getRuntime } from "../src/runtime/runtimes.js";
import { findBinary } from "../src/runtime/which.js";
import { KindlingHome } from "../src/util/home.js";
import { within } from "./helpers/bounded.js";
import { KINDLING, runCli, spawnCliUntil } from "./helpers/cli.js";
import { killRunOwner } from "./helpers/home-service.js";
import { buildBusyboxTree, makeSquashfs } from "./helpers/images.js";
import { leftovers } from "./helpers/leftovers.js";
import { runPiped } from "./helpers/run.js";

let tmp: string;
let home: KindlingHome;
let image: string;
const ids: string[] = [];
const runsc = await findBinary("runsc");

before(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), "kindling-runsc-"));
  home = new KindlingHome(path.join(tmp, "home"));
  await buildBusyboxTree(path.join(tmp, "tree"));
  image = path.join(tmp, "busybox.sqfs");
  await makeSquashfs(path.join(tmp, "tree"), image);
});

after(async () => {
  await cleanupStaleRuns(home).catch(() => {});
  const left = await leftovers(home.root, image, ids);
  await rm(tmp, { recursive: true, force: true });
  assert.deepEqual(left, []);
});

const skip = runsc ? false : "runsc (gVisor) is not installed on this host";

test("runsc (ptrace platform) runs echo: output apart, status through, nothing left", { skip }, async () => {
  const r = await runPiped({
    home,
    image,
    command: ["sh", "-c", "echo hello from gvisor; echo err >&2; exit 3"],
    flags: { runtime: "runsc" },
    runtime: getRuntime("runsc", "lazy"),
  });
  ids.push(r.id);
  assert.equal(r.stdout, "hello from gvisor\n");
  assert.equal(r.stderr, "err\n");
  assert.equal(r.status, 3);
  assert.deepEqual(await leftovers(home.root, image, ids), []);
});

test("runsc output into a regular file is appended after what the file held", { skip }, async () => {
  // gVisor writes a regular-file stdout from offset 0; kindling relays it so nothing is overwritten.
  const file = path.join(tmp, "out.txt");
  const fh = await open(file, "w");
  await fh.write("before\n");
  const ran = new Promise<number | null>((resolve) => {
    const child = spawn(
      process.execPath,
      [KINDLING, "run", "--runtime", "runsc", image, "--", "echo", "hi"],
      {
        env: { ...process.env, KINDLING_HOME: home.root },
        stdio: ["ignore", fh.fd, "inherit"],
      },
    );
    child.on("close", resolve);
  });
  const code = await within(ran, 120_000, "kindling run --runtime runsc into a file to exit");
  await fh.close();
  assert.equal(code, 0);
  assert.equal(await readFile(file, "utf8"), "before\nhi\n");
});

test("a runsc run whose supervisor was SIGKILLed is cleaned up by the next run", { skip }, async () => {
  const cli = await spawnCliUntil(
    ["run", "--runtime", "runsc", image, "--", "sh", "-c", "echo ready; exec sleep 30"],
    {
      home,
    },
  );
  // the run's owner is its supervisor under the service: its crash leaves everything
  const id = await killRunOwner(home.runs);
  ids.push(id);
  await cli.exit();
  const left = await leftovers(home.root, image, [id]);
  assert.ok(
    left.some((l) => l.startsWith("process")) && left.some((l) => l.startsWith("mount")),
    left.join("; "),
  );
  const next = await runPiped({ home, image, command: ["true"], flags: { runtime: "runsc" } });
  ids.push(next.id);
  assert.equal(next.status, 0);
  assert.deepEqual(await leftovers(home.root, image, ids), []);
});

test("runsc under the service: run -d, exec, logs, an attached run, rm -f; nothing left", {
  skip,
}, async () => {
  const cli = (args: string[]) => runCli(args, { home: home.root, env: { KINDLING_SOCKET: "" } });
  const d = await cli([
    "run",
    "-d",
    "--runtime",
    "runsc",
    "--network",
    "none",
    image,
    "--",
    "sh",
    "-c",
    "echo up; sleep 600",
  ]);
  assert.equal(d.code, 0, d.stderr);
  const id = d.stdout.trim();
  ids.push(id);
  const ex = await cli(["exec", id, "--", "sh", "-c", "echo in gvisor; exit 4"]);
  assert.equal(ex.code, 4, ex.stderr);
  assert.equal(ex.stdout, "in gvisor\n");
  const deadline = Date.now() + 30_000;
  let logs = "";
  while (!logs.includes("up") && Date.now() < deadline) logs = (await cli(["logs", id])).stdout;
  assert.equal(logs, "up\n");
  const attached = await cli([
    "run",
    "--rm",
    "--runtime",
    "runsc",
    "--network",
    "none",
    image,
    "--",
    "sh",
    "-c",
    "echo hi; exit 5",
  ]);
  assert.equal(attached.code, 5, attached.stderr);
  assert.equal(attached.stdout, "hi\n");
  assert.equal((await cli(["rm", "-f", id])).code, 0);
  assert.deepEqual(await leftovers(home.root, image, ids), []);
});
