/**
 * rw -v mounts of `--rootfs lazy` survive crashes: the VM's (QEMU killed while the process runs) and
 * kindling's own (SIGKILL; the next run's cleanupStaleRuns kills the VM and syncs the drive back).
 */
import assert from "node:assert/strict";
import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { cleanupStale } from "../src/lazy/index.js";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import { within } from "./helpers/bounded.js";
import { spawnCliUntil } from "./helpers/cli.js";
import { killRunOwner } from "./helpers/home-service.js";
import { leftovers, pidsNaming } from "./helpers/leftovers.js";
import { startPiped } from "./helpers/run.js";
import { type VmTestHome, vmTestHome } from "./helpers/vm-image.js";

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
  const handle = await startPiped({
    home: t.home,
    image: "ml",
    command: ["/bin/sh", "-c", WRITE_THEN_WAIT, "vm-crash"],
    flags: { runtime: "qemu", volume: [`${rw}:/rw`] },
  });
  const s = await handle.started;
  const ready = new Promise<void>((resolve) =>
    s.stdout!.on("data", (d: Buffer) => d.includes("ready") && resolve()),
  );
  await within(ready, 120_000, "the process in the VM to print ready");
  s.stderr!.resume();
  const qemu = await pidsNaming(`${path.join(t.home.runs, s.id)}/`, "qemu-system");
  assert.equal(qemu.length, 1);
  process.kill(qemu[0], "SIGKILL");
  await assert.rejects(handle.result, /the VM failed while the process ran/);
  assert.equal(await readFile(path.join(rw, "vm-crash"), "utf8"), "vm-crash\n");
  assert.deepEqual(await leftovers(t.home.root), []);
});

test("the run's owner (its supervisor) is SIGKILLed: the next cleanup stops the VM and syncs the rw mount back", async () => {
  const cli = await spawnCliUntil(
    [
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
    { home: t.home },
  );
  // the run's owner is its supervisor under the service: its crash leaves everything
  const id = await killRunOwner(t.home.runs);
  await cli.exit();
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
  const cli = await spawnCliUntil(
    [
      "run",
      "--runtime",
      "qemu",
      "ml",
      "--",
      "/bin/sh",
      "-c",
      "echo ready; sleep 2; cat /data/big >/dev/null",
    ],
    { home: t.home },
  );
  const daemon = (await leftovers(t.home.root)).find((l) => l.includes("lazy/daemon"));
  const pid = Number(/^process (\d+):/.exec(daemon ?? "")?.[1]);
  assert.ok(pid > 0, "no lazy daemon found");
  process.kill(pid, "SIGKILL");
  assert.equal(await cli.exit(), 125, cli.err());
  assert.match(
    cli.err(),
    /the lazy image daemon of ml \(pid \d+\) died during the run; the process ended with status 1/,
  );
  assert.deepEqual(await leftovers(t.home.root), []);
});
