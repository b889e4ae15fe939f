import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { exportImage } from "../src/image/export.js";
import { importImage } from "../src/image/import.js";
import { exec } from "../src/util/exec.js";
import { fixture, tempHome } from "./helpers/fixtures.js";

const quiet = { progress: false };

describe("image export", () => {
  let home: Awaited<ReturnType<typeof tempHome>>;
  let work: string;
  before(async () => {
    home = await tempHome();
    work = await mkdtemp("/tmp/kindling-test-export-");
  });
  after(async () => {
    await home.remove();
    await rm(work, { recursive: true, force: true });
  });

  test("export then import of the flattened tar gives the same image (owners, modes, links, xattrs kept)", async () => {
    const orig = await importImage(home, `${await fixture("multilayer-oci")}:v1`, { name: "ml", ...quiet });
    const out = path.join(work, "ml.tar");
    await exportImage(home, "ml", out, false);
    const listing = (await exec("tar", ["-tvf", out, "--numeric-owner"])).stdout;
    assert.match(listing, /-rwsr-xr-x 0\/0 .* \.\/bin\/su/);
    assert.match(listing, /crw-rw-rw- 0\/0 +1,3 .* \.\/dev\/null/);
    assert.match(listing, /\.\/data\/hl link to|\.\/data\/orig link to/);
    assert.match(listing, /drwxr-x--- 1000\/1000 .* \.\/home\/user\//);
    const again = await importImage(home, out, { name: "ml-again", ...quiet });
    assert.equal(again.format, "rootfs-tar");
    // A byte-identical block image: the tree survived the round trip exactly (incl. xattrs, mtimes).
    assert.equal(again.digest, orig.digest);
  });

  test("export of a missing image names it", async () => {
    await assert.rejects(exportImage(home, "nope", path.join(work, "x.tar"), false), /no image named "nope"/);
  });
});
