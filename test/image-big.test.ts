import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { exec } from "../src/util/exec.js";
import { fixture, REPO, tempHome } from "./helpers/fixtures.js";

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
    const env = { ...process.env, KINDLING_HOME: home.root };
    const bin = path.join(REPO, "bin", "kindling");
    const imp = await exec(process.execPath, [bin, "image", "import", tar, "--name", "big"], { env });
    assert.match(imp.stderr, /applying 1 layer\(s\): 50%/);
    assert.match(imp.stderr, /storing chunks: done/);
    const info = JSON.parse(
      (await exec(process.execPath, [bin, "image", "inspect", "big", "--json"], { env })).stdout,
    );
    assert.ok(info.blockSize > 1024 ** 3, `blockSize ${info.blockSize}`);
    assert.equal(info.localBytes, info.blockSize);
    assert.ok(info.chunkCount > 1000);
    await exec(process.execPath, [bin, "image", "rm", "big"], { env });
    assert.deepEqual(
      (await readdir(home.blobs)).filter((n) => !n.startsWith(".")),
      [],
    );
  });
});
