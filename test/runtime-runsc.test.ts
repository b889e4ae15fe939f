import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, open, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { resolveImage } from "../src/runtime/image.js";
import { runContainer } from "../src/runtime/lifecycle.js";
import { parseRunOptions } from "../src/runtime/options.js";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import { getRuntime } from "../src/runtime/runtimes.js";
import { findBinary } from "../src/runtime/which.js";
import { KindlingHome } from "../src/util/home.js";
import { killRunOwner } from "./helpers/home-service.js";
import { buildBusyboxTree, makeSquashfs } from "./helpers/images.js";
import { leftovers } from "./helpers/leftovers.js";
import { readAll } from "./helpers/streams.js";

const KINDLING = fileURLToPath(new URL("../../bin/kindling", import.meta.url));
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
  const options = await parseRunOptions(image, ["sh", "-c", "echo hello from gvisor; echo err >&2; exit 3"], {
    runtime: "runsc",
  });
  const handle = runContainer({
    home,
    options,
    image: await resolveImage(home, image),
    runtime: getRuntime("runsc", "lazy"),
    stdio: { stdout: "pipe", stderr: "pipe" },
  });
  const s = await handle.started;
  const [out, err, result] = await Promise.all([readAll(s.stdout), readAll(s.stderr), handle.result]);
  ids.push(result.id);
  assert.equal(out, "hello from gvisor\n");
  assert.equal(err, "err\n");
  assert.equal(result.status, 3);
  assert.deepEqual(await leftovers(home.root, image, ids), []);
});

test("runsc output into a regular file is appended after what the file held", { skip }, async () => {
  // gVisor writes a regular-file stdout from offset 0; kindling relays it so nothing is overwritten.
  const file = path.join(tmp, "out.txt");
  const fh = await open(file, "w");
  await fh.write("before\n");
  const code = await new Promise<number | null>((resolve) => {
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
  await fh.close();
  assert.equal(code, 0);
  assert.equal(await readFile(file, "utf8"), "before\nhi\n");
});

test("a runsc run whose supervisor was SIGKILLed is cleaned up by the next run", { skip }, async () => {
  const child = spawn(
    process.execPath,
    [KINDLING, "run", "--runtime", "runsc", image, "--", "sh", "-c", "echo ready; exec sleep 30"],
    { env: { ...process.env, KINDLING_HOME: home.root }, stdio: ["ignore", "pipe", "inherit"] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout.on("data", (d: Buffer) => d.toString().includes("ready") && resolve());
    child.on("exit", () => reject(new Error("exited before ready")));
  });
  const exited = new Promise((r) => child.on("exit", r));
  // the run's owner is its supervisor under the service: its crash leaves everything
  const id = await killRunOwner(home.runs);
  ids.push(id);
  await exited;
  const left = await leftovers(home.root, image, [id]);
  assert.ok(
    left.some((l) => l.startsWith("process")) && left.some((l) => l.startsWith("mount")),
    left.join("; "),
  );
  const options = await parseRunOptions(image, ["true"], { runtime: "runsc" });
  const next = await runContainer({
    home,
    options,
    image: await resolveImage(home, image),
    runtime: getRuntime("runsc", "lazy"),
  }).result;
  ids.push(next.id);
  assert.equal(next.status, 0);
  assert.deepEqual(await leftovers(home.root, image, ids), []);
});

test("runsc under the service: run -d, exec, logs, an attached run, rm -f; nothing left", {
  skip,
}, async () => {
  const { runCli } = await import("./helpers/cli.js");
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
