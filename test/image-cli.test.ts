import assert from "node:assert/strict";
import { mkdtemp, readdir, rm, stat } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { exec } from "../src/util/exec.js";
import { fixture, REPO, tempHome } from "./helpers/fixtures.js";

const BIN = path.join(REPO, "bin", "kindling");

describe("kindling image (CLI)", () => {
  let home: Awaited<ReturnType<typeof tempHome>>;
  let work: string;
  const kindling = (args: string[]) =>
    exec(process.execPath, [BIN, ...args], {
      env: { ...process.env, KINDLING_HOME: home.root },
      allowFailure: true,
    });
  before(async () => {
    home = await tempHome();
    work = await mkdtemp("/tmp/kindling-test-cli-");
  });
  after(async () => {
    await home.remove();
    await rm(work, { recursive: true, force: true });
  });

  test("import, ls, inspect --json, export, rm", async () => {
    const imp = await kindling([
      "image",
      "import",
      `${await fixture("busybox-oci")}:latest`,
      "--name",
      "busybox",
    ]);
    assert.equal(imp.code, 0, imp.stderr);
    assert.match(imp.stdout, /^busybox sha256:[0-9a-f]{64} \(oci-layout, /);
    assert.match(imp.stderr, /applying 1 layer\(s\)/, "progress on stderr");

    const ls = await kindling(["image", "ls"]);
    assert.match(ls.stdout, /^NAME +DIGEST +SIZE +ORIGIN\nbusybox +[0-9a-f]{12} /);

    const insp = await kindling(["image", "inspect", "busybox", "--json"]);
    assert.equal(insp.code, 0, insp.stderr);
    const info = JSON.parse(insp.stdout);
    assert.equal(info.name, "busybox");
    assert.match(info.digest, /^sha256:[0-9a-f]{64}$/);
    assert.equal(info.localBytes, info.blockSize);
    assert.ok(info.chunkCount >= 1);
    assert.deepEqual(info.config.entrypoint, ["/bin/busybox"]);
    assert.deepEqual(info.origin, { kind: "local" });

    const out = path.join(work, "bb.tar");
    const exp = await kindling(["image", "export", "busybox", "-o", out]);
    assert.equal(exp.code, 0, exp.stderr);
    assert.ok((await stat(out)).size > 1_000_000);

    const rmr = await kindling(["image", "rm", "busybox"]);
    assert.equal(rmr.code, 0, rmr.stderr);
    assert.deepEqual(
      (await readdir(home.blobs)).filter((n) => !n.startsWith(".")),
      [],
    );
  });

  test("concurrent import processes (same image and name) and an rm leave a consistent store", async () => {
    const oci = `${await fixture("multilayer-oci")}:v1`;
    const bb = await fixture("busybox-rootfs.tar");
    assert.equal((await kindling(["image", "import", bb, "--name", "doomed"])).code, 0);
    const results = await Promise.all([
      kindling(["image", "import", oci, "--name", "ml"]),
      kindling(["image", "import", oci, "--name", "ml"]),
      kindling(["image", "import", bb, "--name", "bb"]),
      kindling(["image", "rm", "doomed"]),
    ]);
    for (const r of results) assert.equal(r.code, 0, r.stderr);
    for (const name of ["ml", "bb"]) {
      const info = JSON.parse((await kindling(["image", "inspect", name, "--json"])).stdout);
      assert.equal(info.localBytes, info.blockSize, `${name} is whole`);
    }
    const ls = (await kindling(["image", "ls"])).stdout;
    assert.doesNotMatch(ls, /doomed/);
    await kindling(["image", "rm", "ml", "bb"]);
    assert.deepEqual(
      (await readdir(home.blobs)).filter((n) => !n.startsWith(".")),
      [],
    );
  });

  test("errors name the problem and exit 125", async () => {
    const r = await kindling(["image", "inspect", "ghost", "--json"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /no image named "ghost"/);
    const bad = await kindling(["image", "import", "/nonexistent/thing.tar", "--name", "x"]);
    assert.equal(bad.code, 125);
    assert.match(bad.stderr, /\/nonexistent\/thing\.tar: no such file or directory/);
  });
});
