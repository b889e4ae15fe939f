/**
 * rw -v mounts of `--rootfs lazy` survive crashes: the VM's (QEMU killed while the process runs) and
 * kindling's own (SIGKILL; the next run's cleanupStaleRuns kills the VM and syncs the drive back).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { cleanupStale } from "../src/lazy/index.js";
import { resolveImage } from "../src/runtime/image.js";
import { runContainer } from "../src/runtime/lifecycle.js";
import { parseRunOptions } from "../src/runtime/options.js";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import { runtimeFor } from "../src/runtime/runtimes.js";
import { killRunOwner } from "./helpers/home-service.js";
import { leftovers, pidsNaming } from "./helpers/leftovers.js";
import { type VmTestHome, vmTestHome } from "./helpers/vm-image.js";

const KINDLING = fileURLToPath(new URL("../../bin/kindling", import.meta.url));
let t: VmTestHome;
let rw: string;

before(async () => {
  t = await vmTestHome();
  rw = path.join(t.tmp, "rw");
  await mkdir(rw);
});
after(async () => {
  await t.cleanup();
});

const WRITE_THEN_WAIT = "echo $0 > /rw/$0; sync; echo ready; exec sleep 600";

test("the VM dies while the process runs: a clear error, and the rw mount's writes reach the host", async () => {
  const options = await parseRunOptions("ml", ["/bin/sh", "-c", WRITE_THEN_WAIT, "vm-crash"], {
    runtime: "qemu",
    volume: [`${rw}:/rw`],
  });
  const handle = runContainer({
    home: t.home,
    options,
    image: await resolveImage(t.home, "ml"),
    runtime: await runtimeFor(options),
    stdio: { stdout: "pipe", stderr: "pipe" },
  });
  const s = await handle.started;
  await new Promise<void>((resolve) => s.stdout!.on("data", (d: Buffer) => d.includes("ready") && resolve()));
  s.stderr!.resume();
  const qemu = await pidsNaming(`${path.join(t.home.runs, s.id)}/`, "qemu-system");
  assert.equal(qemu.length, 1);
  process.kill(qemu[0], "SIGKILL");
  await assert.rejects(handle.result, /the VM failed while the process ran/);
  assert.equal(await readFile(path.join(rw, "vm-crash"), "utf8"), "vm-crash\n");
  assert.deepEqual(await leftovers(t.home.root), []);
});

test("the run's owner (its supervisor) is SIGKILLed: the next cleanup stops the VM and syncs the rw mount back", async () => {
  const child = spawn(
    process.execPath,
    [
      KINDLING,
      "run",
      "--runtime",
      "qemu",
      "-v",
      `${rw}:/rw`,
      "ml",
      "--",
      "/bin/sh",
      "-c",
      WRITE_THEN_WAIT,
      "kindling-crash",
    ],
    { env: { ...process.env, KINDLING_HOME: t.home.root }, stdio: ["ignore", "pipe", "pipe"] },
  );
  child.stderr.resume();
  await new Promise<void>((resolve, reject) => {
    child.stdout.on("data", (d: Buffer) => d.includes("ready") && resolve());
    child.on("exit", () => reject(new Error("kindling exited before the process was ready")));
  });
  const closed = new Promise((r) => child.once("close", r));
  // the run's owner is its supervisor under the service: its crash leaves everything
  const id = await killRunOwner(t.home.runs);
  await closed;
  // The guest powers off when its agent channel closes, so QEMU may be gone already; either way the
  // writes are still only in the run dir's rw drive.
  assert.equal(await readFile(path.join(rw, "kindling-crash"), "utf8").catch(() => "not yet"), "not yet");
  const report = await cleanupStaleRuns(t.home);
  assert.deepEqual(report, { cleaned: [id], errors: [] });
  assert.equal(await readFile(path.join(rw, "kindling-crash"), "utf8"), "kindling-crash\n");
  await cleanupStale(t.home); // the image's lazy daemon, whose owner died too
  assert.deepEqual(await leftovers(t.home.root), []);
});

test("the image's lazy daemon dies during the run: 125 naming it, and nothing left", async () => {
  const child = spawn(
    process.execPath,
    [
      KINDLING,
      "run",
      "--runtime",
      "qemu",
      "ml",
      "--",
      "/bin/sh",
      "-c",
      "echo ready; sleep 2; cat /data/big >/dev/null",
    ],
    { env: { ...process.env, KINDLING_HOME: t.home.root }, stdio: ["ignore", "pipe", "pipe"] },
  );
  let err = "";
  child.stderr.on("data", (d) => {
    err += d;
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on("data", (d: Buffer) => d.includes("ready") && resolve());
    child.on("exit", () => reject(new Error(`kindling exited before the process was ready: ${err}`)));
  });
  const daemon = (await leftovers(t.home.root)).find((l) => l.includes("lazy/daemon"));
  const pid = Number(/^process (\d+):/.exec(daemon ?? "")?.[1]);
  assert.ok(pid > 0, "no lazy daemon found");
  process.kill(pid, "SIGKILL");
  const code = await new Promise((resolve) => child.on("close", resolve));
  assert.equal(code, 125, err);
  assert.match(
    err,
    /the lazy image daemon of ml \(pid \d+\) died during the run; the process ended with status 1/,
  );
  assert.deepEqual(await leftovers(t.home.root), []);
});
