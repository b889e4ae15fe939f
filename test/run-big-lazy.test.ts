import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import type { KindlingHome } from "../src/util/home.js";
import { runCli } from "./helpers/cli.js";
import { fixture, tempHome } from "./helpers/fixtures.js";
import { leftovers } from "./helpers/leftovers.js";
import { startRegistry, type TestRegistry } from "./helpers/registry.js";

// The end-to-end check: a >1 GB image pushed to a registry on 127.0.0.1 and pulled lazily
// into a fresh home; its first run reads only what it touches.

describe("kindling run on a >1 GB image pulled lazily from a registry", () => {
  let builder: Awaited<ReturnType<typeof tempHome>>;
  let worker: Awaited<ReturnType<typeof tempHome>>;
  let registry: TestRegistry;
  let ref: string;
  let tmp: string;

  // Import, push and pull of >1 GB take minutes on a loaded host: a wider bound than runCli's default.
  const kindling = (home: KindlingHome, args: string[]) => runCli(args, { home, timeoutMs: 900_000 });
  const inspect = async () =>
    JSON.parse((await kindling(worker, ["image", "inspect", ref, "--json"])).stdout) as {
      blockSize: number;
      localBytes: number;
    };

  before(async () => {
    const tar = await fixture("debian-big.tar");
    tmp = await mkdtemp("/tmp/kindling-run-big-");
    builder = await tempHome();
    worker = await tempHome();
    registry = await startRegistry();
    ref = `${registry.host}/big/debian:1`;
    const steps: string[][] = [
      ["image", "import", tar, "--name", "big"],
      // Chunks only: packs would double the upload of >1 GB (they are tested in lazy-packs).
      ["image", "push", "big", ref, "--insecure", "--no-packs"],
    ];
    for (const args of steps) {
      const r = await kindling(builder, args);
      assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    }
    const pull = await kindling(worker, ["image", "pull", ref, "--insecure"]);
    assert.equal(pull.code, 0, pull.stderr);
  });

  after(async () => {
    await registry?.stop();
    const left: string[] = [];
    for (const home of [worker, builder]) {
      if (!home) continue;
      await cleanupStaleRuns(home).catch(() => {});
      left.push(...(await leftovers(home.root)));
      await home.remove();
    }
    await rm(tmp, { recursive: true, force: true });
    assert.deepEqual(left, []);
  });

  test("the first `run -- cat /etc/os-release` fetches well under 10% of the block image", async (t) => {
    const before = await inspect();
    assert.ok(before.blockSize > 1024 ** 3, `blockSize ${before.blockSize}`);
    assert.ok(before.localBytes < before.blockSize / 100, `pulled eagerly: ${before.localBytes}`);
    const r = await kindling(worker, ["run", "--runtime", "runc", ref, "--", "cat", "/etc/os-release"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^PRETTY_NAME="Debian GNU\/Linux 12 \(bookworm\)"$/m);
    const afterRun = await inspect();
    const share = afterRun.localBytes / afterRun.blockSize;
    t.diagnostic(
      `first run fetched ${afterRun.localBytes} of ${afterRun.blockSize} bytes (${(share * 100).toFixed(2)}%)`,
    );
    assert.ok(share < 0.1, `fetched ${(share * 100).toFixed(1)}% of the image`);
    assert.deepEqual(await leftovers(worker.root), []);
  });

  test("output, status, env, cwd and user pass through", async () => {
    const r = await kindling(worker, [
      "run",
      "--runtime",
      "runc",
      "-e",
      "FOO=bar",
      "-w",
      "/srv/work",
      "-u",
      "1000:1000",
      ref,
      "--",
      "sh",
      "-c",
      'echo "$FOO"; pwd; id -u; id -g; echo to-stderr >&2; exit 3',
    ]);
    assert.equal(r.code, 3);
    assert.equal(r.stdout, "bar\n/srv/work\n1000\n1000\n");
    assert.equal(r.stderr, "to-stderr\n");
    const nobody = await kindling(worker, [
      "run",
      "--runtime",
      "runc",
      "-u",
      "nobody",
      ref,
      "--",
      "id",
      "-un",
    ]);
    assert.equal(nobody.stdout, "nobody\n");
  });

  test("ro and rw mounts; writes to / stay in their container", async () => {
    const ro = path.join(tmp, "ro");
    const rw = path.join(tmp, "rw");
    await mkdir(ro);
    await mkdir(rw);
    await writeFile(path.join(ro, "f"), "from the host\n");
    const r = await kindling(worker, [
      "run",
      "--runtime",
      "runc",
      "-v",
      `${ro}:/in:ro`,
      "-v",
      `${rw}:/out`,
      ref,
      "--",
      "sh",
      "-c",
      "cat /in/f; touch /in/x 2>/dev/null || echo ro-refused; echo written > /out/w; echo mine > /etc/marker; rm /etc/debian_version",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "from the host\nro-refused\n");
    assert.deepEqual(await readdir(ro), ["f"]);
    assert.equal(await readFile(path.join(rw, "w"), "utf8"), "written\n");
    const next = await kindling(worker, [
      "run",
      "--runtime",
      "runc",
      ref,
      "--",
      "sh",
      "-c",
      "test -e /etc/marker && echo leaked; cat /etc/debian_version",
    ]);
    assert.equal(next.code, 0, next.stderr);
    assert.match(next.stdout, /^12\.\d+\n$/);
  });

  test("runsc runs it too", async () => {
    const r = await kindling(worker, ["run", "--runtime", "runsc", ref, "--", "cat", "/etc/debian_version"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^12\.\d+\n$/);
    assert.deepEqual(await leftovers(worker.root), []);
  });

  // Last: it stops the registry.
  test("a stopped registry gives a clear error within the fetch deadline, and nothing left", async () => {
    await registry.stop();
    // Bounded: a run that does not give up within 60 s fails the test (runCli kills it).
    const r = await runCli(
      [
        "run",
        "--runtime",
        "runc",
        ref,
        "--",
        "sh",
        "-c",
        "f=$(find /usr /var -type f -size +256k) && cat $f >/dev/null",
      ],
      { home: worker, env: { KINDLING_FETCH_TIMEOUT_MS: "3000" }, timeoutMs: 60_000 },
    );
    assert.equal(r.code, 125, r.stderr);
    assert.match(
      r.stderr,
      /kindling: .*read\(s\) of image .*big\/debian:1 failed \(EIO after \d+ failed fetch/,
    );
    assert.deepEqual(await leftovers(worker.root), []);
  });
});
