import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { isSameProcess } from "../src/host/process.js";
import { cleanupStale, liveDaemonPids } from "../src/lazy/index.js";
import { readBlockIndex } from "../src/store/blockindex.js";
import { exec } from "../src/util/exec.js";
import { exited, firstLine, until } from "./helpers/bounded.js";
import { runCli } from "./helpers/cli.js";
import { fixture, tempHome } from "./helpers/fixtures.js";
import { leftovers, pidsNaming } from "./helpers/leftovers.js";
import { loadOciLayout, startRegistry, type TestRegistry } from "./helpers/registry.js";

describe("image pull and push (CLI, real registry on 127.0.0.1)", () => {
  let reg: TestRegistry;
  let homes: Awaited<ReturnType<typeof tempHome>>[];
  const kindling = async (home: { root: string }, args: string[], env?: Record<string, string>) => {
    const r = await runCli(args, { home, env });
    assert.equal(r.code, 0, `kindling ${args.join(" ")}: ${r.stderr}`);
    return r;
  };
  const inspect = async (home: { root: string }, name: string) =>
    JSON.parse((await kindling(home, ["image", "inspect", name, "--json"])).stdout);
  /** `cat /etc/passwd` in a runc container of `ref`, without a network. */
  const catPasswd = (home: { root: string }, ref: string) =>
    kindling(home, ["run", "--runtime", "runc", "--network", "none", ref, "--", "cat", "/etc/passwd"]);

  before(async () => {
    reg = await startRegistry();
    homes = [await tempHome(), await tempHome(), await tempHome(), await tempHome(), await tempHome()];
  });
  after(async () => {
    await reg?.stop();
    for (const h of homes ?? []) await h.remove();
  });

  test("a pulled container image converts to the same digest as the imported layout", async () => {
    const [a] = homes;
    const layout = await fixture("busybox-oci");
    const ref = await loadOciLayout(reg, layout, "latest", "library/busybox");
    await kindling(a!, ["image", "import", `${layout}:latest`, "--name", "local-bb"]);
    const pull = await kindling(a!, ["image", "pull", ref, "--insecure"]);
    assert.match(pull.stdout, /sha256:[0-9a-f]{64}/);
    const pulled = await inspect(a!, ref);
    const local = await inspect(a!, "local-bb");
    assert.equal(pulled.digest, local.digest);
    assert.deepEqual(pulled.config, local.config);
    assert.deepEqual(pulled.origin, { kind: "local" });
  });

  test("a pulled multi-layer image (nested index; gzip, zstd and plain layers) matches its local import", async () => {
    const [a] = homes;
    const layout = await fixture("multilayer-oci");
    const ref = await loadOciLayout(reg, layout, "v1", "team/multilayer");
    await kindling(a!, ["image", "import", `${layout}:v1`, "--name", "local-ml"]);
    await kindling(a!, ["image", "pull", ref, "--insecure"]);
    const pulled = await inspect(a!, ref);
    const local = await inspect(a!, "local-ml");
    assert.equal(pulled.digest, local.digest);
    assert.deepEqual(pulled.config, local.config);
  });

  test("push a converted image; another worker's pull takes the index only (lazy)", async () => {
    const [a, b] = homes;
    const ref = `${reg.host}/kindling/busybox:v1`;
    await kindling(a!, ["image", "push", "local-bb", ref, "--insecure"]);
    // Without the lazy daemon a pull starts by default (its prefetch would fetch chunks: next test).
    await kindling(b!, ["image", "pull", ref, "--insecure"], { KINDLING_PULL_START_DAEMON: "0" });
    assert.deepEqual(await liveDaemonPids(b!, (await inspect(a!, "local-bb")).digest), [], "no daemon");
    const there = await inspect(b!, ref);
    const here = await inspect(a!, "local-bb");
    assert.equal(there.digest, here.digest);
    assert.equal(there.blockSize, here.blockSize);
    assert.equal(there.chunkCount, here.chunkCount);
    assert.equal(there.localBytes, 0, "no chunk fetched yet");
    assert.equal(there.origin.kind, "registry");
    assert.deepEqual(there.config, here.config);
    // Exporting needs every chunk: they come from the registry, verified, and stay cached.
    const out = path.join(b!.root, "bb.tar");
    await kindling(b!, ["image", "export", ref, "-o", out]);
    assert.match((await exec("tar", ["-tf", out])).stdout, /\.\/bin\/busybox/);
    assert.equal((await inspect(b!, ref)).localBytes, here.blockSize);
  });

  test("a lazy pull starts the image's daemon in the background; the first run joins it; image rm stops it", async () => {
    const [, , c] = homes;
    const ref = `${reg.host}/kindling/busybox:v1`; // pushed by the test above
    const pull = await kindling(c!, ["image", "pull", ref, "--insecure"]);
    const digest = pull.stdout.trim().split(" ").at(-1)!;
    // Spawned before the pull returned; it serves (state written, start lock gone) within its bound.
    await until(
      "the pull's daemon to serve",
      async () => (await liveDaemonPids(c!, digest)).length === 1,
      20_000,
    );
    const [pid] = await liveDaemonPids(c!, digest);
    const run = await catPasswd(c!, ref);
    assert.match(run.stdout, /root:/);
    assert.deepEqual(await liveDaemonPids(c!, digest), [pid], "the run used the pull's daemon");
    assert.ok((await inspect(c!, ref)).localBytes > 0, "it fetched what the run read");
    // image rm stops it (the service holds the image warm: rm asks it to let go first).
    await kindling(c!, ["image", "rm", ref]);
    assert.deepEqual(await liveDaemonPids(c!, digest), []);
    assert.deepEqual(await leftovers(c!.root), []);
  });

  /** Directories of lazy daemons being made (mnt/.new-*): an early start's, until it has its image. */
  const halfMade = async (home: { mounts: string }) =>
    (await readdir(home.mounts).catch(() => [] as string[])).filter((n) => n.startsWith(".new-"));

  test("the daemon a pull starts early: used for a lazy image, ended by a re-pull, a failed pull and bad input", async () => {
    const e = homes[4]!;
    const ref = `${reg.host}/kindling/busybox:v1`; // pushed above
    const pull = await kindling(e, ["image", "pull", ref, "--insecure"]);
    const digest = pull.stdout.trim().split(" ").at(-1)!;
    await until(
      "the pull's daemon to serve",
      async () => (await liveDaemonPids(e, digest)).length === 1,
      20_000,
    );
    const [pid] = await liveDaemonPids(e, digest);
    // Started before the image was known, it logs where a daemon started after the pull would.
    const [dir] = (await readdir(e.mounts)).filter((n) => /^[0-9a-f]{16}$/.test(n));
    const log = path.join(e.mounts, dir!, "daemon.log");
    await until("its log to say it serves", async () => /serving /.test(await readFile(log, "utf8")), 10_000);
    // Only the image's daemon names this home once a pull is done (an early start names its directory).
    const onlyTheDaemon = async () => {
      const pids = await pidsNaming(`${e.root}/`);
      return pids.length === 1 && pids[0] === pid && (await halfMade(e)).length === 0;
    };
    assert.deepEqual(await halfMade(e), []);
    // A re-pull: the image's daemon serves already; the one this pull started early is ended.
    await kindling(e, ["image", "pull", ref, "--insecure"]);
    await until("the re-pull's early daemon to end", onlyTheDaemon, 10_000);
    // A failed pull (no such tag): one line, status 125, and its early daemon ended too.
    const bad = await runCli(["image", "pull", `${reg.host}/kindling/busybox:nosuch`, "--insecure"], {
      home: e,
    });
    assert.equal(bad.code, 125, bad.stderr);
    assert.equal(bad.stderr.trim().split("\n").length, 1, bad.stderr);
    await until("the failed pull's early daemon to end", onlyTheDaemon, 10_000);
    // Bad input after the CLI started it (an unknown --platform): ended as well.
    const badPlatform = await runCli(["image", "pull", "--platform", "nope", ref, "--insecure"], { home: e });
    assert.equal(badPlatform.code, 125, badPlatform.stderr);
    await until("the bad --platform pull's early daemon to end", onlyTheDaemon, 10_000);
    await kindling(e, ["image", "rm", ref]);
    assert.deepEqual(await leftovers(e.root), []);
  });

  test("an early daemon whose starter dies before it knows its image exits; a cleanup removes its directory", async () => {
    const e = homes[4]!;
    const client = new URL("../src/lazy/client.js", import.meta.url).href;
    const homeJs = new URL("../src/util/home.js", import.meta.url).href;
    // A starter that is killed while its early daemon waits for its directory.
    const starter = spawn(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `import { startEarlyDaemon } from ${JSON.stringify(client)};
         import { KindlingHome } from ${JSON.stringify(homeJs)};
         const early = await startEarlyDaemon(new KindlingHome(process.argv[1]));
         console.log(early.child.pid);
         setInterval(() => {}, 1000);`,
        e.root,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    const pid = Number(await firstLine(starter, 20_000, "the early daemon's pid"));
    assert.ok(isSameProcess(pid), "the early daemon runs");
    assert.equal((await halfMade(e)).length, 1);
    starter.kill("SIGKILL");
    await exited(starter, 10_000, "the starter");
    await until("the early daemon to exit", async () => !isSameProcess(pid), 20_000);
    await cleanupStale(e);
    assert.deepEqual(await halfMade(e), []);
    assert.deepEqual(await leftovers(e.root), []);
  });

  test("an image imported --compression lz4 runs under runc from another worker's lazy pull", async () => {
    const [a, , , d] = homes;
    const layout = await fixture("busybox-oci");
    await kindling(a!, ["image", "import", `${layout}:latest`, "--name", "bb-lz4", "--compression", "lz4"]);
    const lz4 = await inspect(a!, "bb-lz4");
    assert.notEqual(lz4.digest, (await inspect(a!, "local-bb")).digest, "another block image");
    // The setting reaches the builder as the flag does: the same bytes, the same digest.
    await kindling(a!, ["image", "import", `${layout}:latest`, "--name", "bb-lz4-env"], {
      KINDLING_BLOCK_COMPRESSION: "lz4",
    });
    assert.equal((await inspect(a!, "bb-lz4-env")).digest, lz4.digest);
    const ref = `${reg.host}/kindling/busybox:lz4`;
    await kindling(a!, ["image", "push", "bb-lz4", ref, "--insecure"]);
    await kindling(d!, ["image", "pull", ref, "--insecure"]);
    const run = await catPasswd(d!, ref);
    assert.match(run.stdout, /root:/);
    // The worker read an lz4 SquashFS: its superblock (fetched by the run) names lz4 (id 5).
    const index = await readBlockIndex(d!, lz4.digest);
    const head = await readFile(d!.blobPath(index.chunks[0]!.digest));
    assert.equal(head.readUInt16LE(20), 5);
    await kindling(d!, ["image", "rm", ref]);
    assert.deepEqual(await leftovers(d!.root), []);
  });
});
