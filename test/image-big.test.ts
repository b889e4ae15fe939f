import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { runCli } from "./helpers/cli.js";
import { fixture, tempHome } from "./helpers/fixtures.js";

describe("a >1 GB image", () => {
  let home: Awaited<ReturnType<typeof tempHome>>;
  before(async () => {
    home = await tempHome();
  });
  after(async () => {
    await home.remove();
  });

  test("imports with progress, is stored whole, and is removed whole", async () => {
    const tar = await fixture("debian-big.tar");
    const imp = await runCli(["image", "import", tar, "--name", "big"], { home, timeoutMs: 900_000 });
    assert.equal(imp.code, 0, imp.stderr);
    assert.match(imp.stderr, /applying 1 layer\(s\): 50%/);
    assert.match(imp.stderr, /storing chunks: done/);
    const info = JSON.parse((await runCli(["image", "inspect", "big", "--json"], { home })).stdout);
    assert.ok(info.blockSize > 1024 ** 3, `blockSize ${info.blockSize}`);
    assert.equal(info.localBytes, info.blockSize);
    assert.ok(info.chunkCount > 1000);
    assert.equal((await runCli(["image", "rm", "big"], { home })).code, 0);
    assert.deepEqual(
      (await readdir(home.blobs)).filter((n) => !n.startsWith(".")),
      [],
    );
  });
});
