import assert from "node:assert/strict";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { exec } from "../src/util/exec.js";
import { runCli } from "./helpers/cli.js";
import { fixture, tempHome } from "./helpers/fixtures.js";
import { loadOciLayout, startRegistry, type TestRegistry } from "./helpers/registry.js";

describe("image pull and push (CLI, real registry on 127.0.0.1)", () => {
  let reg: TestRegistry;
  let homes: Awaited<ReturnType<typeof tempHome>>[];
  const kindling = async (home: { root: string }, args: string[]) => {
    const r = await runCli(args, { home });
    assert.equal(r.code, 0, `kindling ${args.join(" ")}: ${r.stderr}`);
    return r;
  };
  const inspect = async (home: { root: string }, name: string) =>
    JSON.parse((await kindling(home, ["image", "inspect", name, "--json"])).stdout);

  before(async () => {
    reg = await startRegistry();
    homes = [await tempHome(), await tempHome()];
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
    await kindling(b!, ["image", "pull", ref, "--insecure"]);
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
});
