/**
 * Issue 15, class 2: concurrent runs, pulls and removals of one lazily pulled image in one home
 * (real registry, real runc and QEMU, real FUSE). Each run either works or ends with a one-line
 * error; nothing is left mounted, attached or running; a cold start never loses its daemon
 * directory to another process's stale-daemon cleanup.
 */
import assert from "node:assert/strict";
import { rm, symlink } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { pullImage, pushImage } from "../src/image/registry.js";
import { stopIdleShared } from "../src/lazy/index.js";
import { KindlingHome } from "../src/util/home.js";
import { runCli } from "./helpers/cli.js";
import { REPO } from "./helpers/fixtures.js";
import { leftovers } from "./helpers/leftovers.js";
import { startRegistry, type TestRegistry } from "./helpers/registry.js";
import { type VmTestHome, vmTestHome } from "./helpers/vm-image.js";

let t: VmTestHome;
let registry: TestRegistry;
let home: KindlingHome;
let ref: string;

before(async () => {
  t = await vmTestHome();
  registry = await startRegistry();
  ref = `${registry.host}/races/ml:1`;
  await pushImage(t.home, "ml", ref, { insecure: true, progress: false });
  home = new KindlingHome(path.join(t.tmp, "pulled")).ensure();
  await rm(home.kernel, { recursive: true, force: true });
  await symlink(path.join(REPO, ".cache", "vm-test-home", "kernel"), home.kernel);
  await pullImage(home, ref, { insecure: true, progress: false });
});

after(async () => {
  await stopIdleShared(home).catch(() => {});
  const left = await leftovers(home.root);
  await registry.stop();
  await t.cleanup();
  assert.deepEqual(left, []);
});

/** Runs the CLI (default: in `home`) with a short lazy idle time; bounded by runCli. */
function kindling(args: string[], opts: { home?: KindlingHome; env?: Record<string, string> } = {}) {
  return runCli(args, { home: opts.home ?? home, env: { KINDLING_LAZY_IDLE_MS: "2000", ...opts.env } });
}

const noStack = (err: string) => !/^\s+at /m.test(err);

test("6 runc + 2 QEMU runs of one lazily pulled image started at once all work", async () => {
  const runs = [
    ...Array.from({ length: 6 }, () =>
      kindling(["run", "--runtime", "runc", ref, "--", "cat", "/data/layer2"]),
    ),
    ...Array.from({ length: 2 }, () =>
      kindling(["run", "--runtime", "qemu", ref, "--", "cat", "/data/layer2"]),
    ),
  ];
  const results = await Promise.all(runs);
  for (const [i, r] of results.entries()) {
    assert.equal(r.code, 0, `run ${i}: status ${r.code}: ${r.stderr}`);
    assert.equal(r.stdout, "from layer 2\n", `run ${i}`);
  }
  assert.deepEqual(await leftovers(home.root), []);
});

test("runs, pulls and removals of one image at once: each works or fails with one line; nothing leaks", async () => {
  const ops = [
    ...Array.from({ length: 3 }, () =>
      kindling(["run", "--runtime", "runc", ref, "--", "cat", "/data/layer2"]),
    ),
    kindling(["image", "pull", "--insecure", ref]),
    kindling(["image", "pull", "--insecure", ref]),
    new Promise<void>((r) => setTimeout(r, 300)).then(() => kindling(["image", "rm", ref])),
    kindling(["run", "--runtime", "runc", ref, "--", "cat", "/data/layer2"]),
  ];
  const results = await Promise.all(ops);
  for (const [i, r] of results.entries()) {
    assert.ok(r.code === 0 || r.code === 125, `op ${i}: status ${r.code}: ${r.stderr}`);
    assert.ok(noStack(r.stderr), `op ${i}: no stack trace: ${r.stderr}`);
    if (r.code === 125) assert.equal(r.stderr.trim().split("\n").length, 1, `op ${i}: one line: ${r.stderr}`);
    if (r.code === 0 && i < 3) assert.equal(r.stdout, "from layer 2\n", `op ${i}`);
  }
  await stopIdleShared(home);
  assert.deepEqual(await leftovers(home.root), []);
  // Whatever won, a pull and a run afterwards work.
  const pulled = await kindling(["image", "pull", "--insecure", ref]);
  assert.equal(pulled.code, 0, pulled.stderr);
  const r = await kindling(["run", "--runtime", "runc", ref, "--", "cat", "/data/layer2"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "from layer 2\n");
});

test("a failed read does not poison the image's shared SquashFS mount: later runc runs work once the registry is back", async () => {
  const cold = new KindlingHome(path.join(t.tmp, "poison")).ensure();
  await pullImage(cold, ref, { insecure: true, progress: false });
  const opts = { home: cold, env: { KINDLING_FETCH_TIMEOUT_MS: "1500", KINDLING_LAZY_IDLE_MS: "60000" } };
  const readAll = "find / -xdev -type f -exec cat {} + >/dev/null && echo all-read";
  try {
    const warm = await kindling(["run", "--runtime", "runc", ref, "--", "cat", "/data/hello"], opts);
    assert.equal(warm.code, 0, warm.stderr);
    registry.signal("SIGSTOP");
    const failed = await kindling(["run", "--runtime", "runc", ref, "--", "sh", "-c", readAll], opts);
    registry.signal("SIGCONT");
    assert.notEqual(failed.code, 0, "reads fail while the registry is frozen");
    assert.match(failed.stderr, /did not answer within 1500 ms/, "one message that says why");
    // The same shared daemon serves the next run; the breaker and the failure memo need a moment.
    let again = { code: -1, stdout: "", stderr: "" };
    for (let tries = 0; tries < 5 && again.code !== 0; tries++) {
      await new Promise((r) => setTimeout(r, 2500));
      again = await kindling(["run", "--runtime", "runc", ref, "--", "sh", "-c", readAll], opts);
    }
    assert.equal(again.code, 0, `a later run reads every file: ${again.stderr}`);
    assert.equal(again.stdout, "all-read\n");
  } finally {
    registry.signal("SIGCONT");
    await stopIdleShared(cold);
  }
  assert.deepEqual(await leftovers(cold.root), []);
});
