/**
 * The service keeps an image's lazy daemon (and, for runc, its SquashFS mount) running after the
 * image's containers have ended, where without a service it leaves after KINDLING_LAZY_IDLE_MS;
 * `image rm` (CLI, through the service) lets go of it and removes the image.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { importImage } from "../src/image/import.js";
import { liveDaemonPids } from "../src/lazy/index.js";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import { loadImage } from "../src/store/catalog.js";
import { KindlingHome } from "../src/util/home.js";
import { fixture } from "./helpers/fixtures.js";
import { leftovers } from "./helpers/leftovers.js";
import { cli, startService, stopServiceAndContainers, type TestService } from "./helpers/service.js";

let tmp: string;
let home: KindlingHome;
let service: TestService;

before(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), "kindling-warm-"));
  home = new KindlingHome(path.join(tmp, "home")).ensure();
  await importImage(home, await fixture("busybox-rootfs.tar"), { name: "bb" });
  // A daemon nobody holds leaves 300 ms after its last user.
  service = await startService(home.root, [], { KINDLING_LAZY_IDLE_MS: "300" });
});

after(async () => {
  await service?.stop().catch(() => {});
  await stopServiceAndContainers(home.root);
  await cleanupStaleRuns(home).catch(() => {});
  const left = await leftovers(home.root);
  await rm(tmp, { recursive: true, force: true });
  assert.deepEqual(left, []);
});

test("the service keeps a used image's lazy daemon; image rm releases it", async () => {
  const digest = (await loadImage(home, "bb")).digest;
  const run = await cli(home.root, [
    "run",
    "-d",
    "--rm",
    "--runtime",
    "runc",
    "--network",
    "none",
    "bb",
    "--",
    "true",
  ]);
  assert.equal(run.code, 0, run.stderr);
  const deadline = Date.now() + 30_000;
  while ((await cli(home.root, ["ps", "-aq"])).stdout !== "") {
    assert.ok(Date.now() < deadline, "the --rm container did not go within 30 s");
    await sleep(100);
  }
  await sleep(1500); // five times the idle time
  assert.equal((await liveDaemonPids(home, digest)).length, 1, "the image's daemon still runs");
  const metrics = await service.client.metrics();
  assert.match(metrics, /^kindling_warm_images 1$/m);

  const removed = await cli(home.root, ["image", "rm", "bb"]);
  assert.equal(removed.code, 0, removed.stderr);
  assert.match(removed.stdout, /^removed bb \(freed \d+ blobs/);
  const gone = Date.now() + 15_000;
  while ((await liveDaemonPids(home, digest)).length > 0) {
    assert.ok(Date.now() < gone, "the daemon did not stop within 15 s after image rm");
    await sleep(100);
  }
});
