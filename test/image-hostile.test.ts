import assert from "node:assert/strict";
import { lstat, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { LayerApplier } from "../src/image/apply.js";
import { openLayer } from "../src/image/compression.js";
import { importImage } from "../src/image/import.js";
import { listImages } from "../src/store/catalog.js";
import { KindlingError } from "../src/util/errors.js";
import { fixture, tempHome } from "./helpers/fixtures.js";

// Every hostile tar aims at this directory (see scripts/fixtures/hostile.sh).
const TARGET = "/tmp/kindling-hostile-target";

type Expect = { rejects: RegExp } | { contained: string; content?: string };

const CASES: Record<string, Expect> = {
  dotdot: { rejects: /tar entry "\.\.\/.*dotdot": path climbs out of the image root/ },
  "whiteout-dotdot": { rejects: /tar entry "\.\.\/\.wh\.etc": path climbs out/ },
  "hardlink-out": { rejects: /tar entry "hl": hard link target climbs out of the image root/ },
  "hardlink-via-symlink": {
    rejects: /tar entry "hl": hard link target "root\/etc\/passwd" does not exist in the image/,
  },
  "symlink-loop": { rejects: /tar entry "loop1\/x": too many levels of symbolic links/ },
  "long-name": { rejects: /tar entry d+\.\.\.: path is 5026 bytes \(limit 4096\)/ },
  "long-component": { rejects: /tar entry x+\.\.\.: a path component is longer than 255 bytes/ },
  "huge-size": { rejects: /tar entry huge: absurd size 1125899906842624 bytes/ },
  absolute: { contained: `${TARGET}/absolute` },
  "symlink-abs": { contained: `${TARGET}/through-abs` },
  "symlink-rel": { contained: `${TARGET}/through-rel` },
  "symlink-chain": { contained: `${TARGET}/through-chain` },
  "overwrite-symlink": { contained: "victim" },
};

async function gone(p: string): Promise<boolean> {
  return lstat(p).then(
    () => false,
    () => true,
  );
}

describe("hostile layers", () => {
  let work: string;
  before(async () => {
    await rm(TARGET, { recursive: true, force: true });
    work = await mkdtemp("/tmp/kindling-test-hostile-");
  });
  after(async () => {
    await rm(work, { recursive: true, force: true });
  });

  for (const [name, expect] of Object.entries(CASES)) {
    test(`${name}: ${"rejects" in expect ? "rejected, naming the entry" : "contained in the root"}`, async () => {
      const root = path.join(work, name);
      await mkdir(root);
      const tarPath = path.join(await fixture("hostile"), `${name}.tar`);
      const applier = new LayerApplier(root);
      const run = async () => {
        const layer = await openLayer({ path: tarPath });
        await applier.apply(layer.stream, `layer ${name}`);
        await applier.finish();
      };
      if ("rejects" in expect) {
        await assert.rejects(run(), (err: Error) => {
          assert.ok(err instanceof KindlingError, `${err}`);
          assert.match(err.message, expect.rejects);
          return true;
        });
      } else {
        await run();
        const inside = path.join(root, expect.contained);
        const st = await lstat(inside);
        assert.ok(st.isFile(), `${inside} is a regular file`);
        assert.equal(await readFile(inside, "utf8"), "evil\n");
      }
      assert.ok(await gone(TARGET), `${TARGET} must not exist`);
    });
  }

  test("import of a hostile rootfs tar fails naming the entry, and records no image", async () => {
    const home = await tempHome();
    try {
      const tarPath = path.join(await fixture("hostile"), "dotdot.tar");
      await assert.rejects(
        importImage(home, tarPath, { name: "evil", progress: false }),
        /tar entry ".*dotdot"/,
      );
      assert.deepEqual(await listImages(home), []);
      assert.ok(await gone(TARGET));
    } finally {
      await home.remove();
    }
  });
});
