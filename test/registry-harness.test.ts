import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import {
  loadOciLayout,
  MT,
  OciLayoutWriter,
  startRegistry,
  type TestRegistry,
  tarDir,
} from "./helpers/registry.js";

let reg: TestRegistry;
let work: string;
before(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "kindling-harness-"));
  reg = await startRegistry();
});
after(async () => {
  await reg?.stop();
  await rm(work, { recursive: true, force: true });
});

test("the harness serves /v2/, loads an OCI layout with skopeo and cleans up on stop", async () => {
  const root = path.join(work, "root");
  await mkdir(root);
  await writeFile(path.join(root, "hello"), "hi\n");
  const layout = await OciLayoutWriter.create(path.join(work, "layout"));
  const img = await layout.image([{ data: await tarDir(root), mediaType: MT.layerTar }]);
  await layout.tag(img, "v1");
  const ref = await loadOciLayout(reg, layout.dir, "v1", "harness/hello");
  assert.equal(ref, `${reg.host}/harness/hello:v1`);
  const res = await fetch(`${reg.url}/v2/harness/hello/manifests/v1`, {
    method: "HEAD",
    headers: { accept: MT.ociManifest },
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("docker-content-digest"), img.digest);

  const other = await startRegistry({ auth: "basic" });
  const dir = other.dataDir;
  try {
    const unauth = await fetch(`${other.url}/v2/`);
    assert.equal(unauth.status, 401);
    await loadOciLayout(other, layout.dir, "v1", "harness/hello");
  } finally {
    await other.stop();
  }
  await assert.rejects(stat(dir));
  await other.stop(); // a second stop is harmless
});
