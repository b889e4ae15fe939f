import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { pullFromRegistry } from "../src/registry/pull.js";
import { exec } from "../src/util/exec.js";
import { filesLayout, loadOciLayout, startRegistry, type TestRegistry } from "./helpers/registry.js";

// Without --insecure the client speaks HTTPS and checks certificates like any Node program.

let reg: TestRegistry;
let work: string;
before(async () => {
  process.env.KINDLING_AUTH_FILE = "/nonexistent/kindling-auth.json";
  work = await mkdtemp(path.join(os.tmpdir(), "kindling-tls-"));
  reg = await startRegistry({ tls: true });
  const layout = await filesLayout(path.join(work, "layout"));
  await loadOciLayout(reg, layout.dir, "v1", "tls/app");
});
after(async () => {
  await reg?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

test("an untrusted certificate is a clear error, not retried", async () => {
  const t0 = Date.now();
  await assert.rejects(
    pullFromRegistry(`${reg.host}/tls/app:v1`, { insecure: false, tmpDir: work, quiet: true }),
    /TLS certificate is not trusted .*NODE_EXTRA_CA_CERTS/,
  );
  assert.ok(Date.now() - t0 < 1000, "no retries with backoff");
});

test("with the CA trusted (NODE_EXTRA_CA_CERTS), a pull over HTTPS works", async () => {
  // NODE_EXTRA_CA_CERTS is read at startup, so the pull runs in a child process.
  const pull = fileURLToPath(new URL("../src/registry/pull.js", import.meta.url));
  const script = `
    const { pullFromRegistry } = await import(${JSON.stringify(pull)});
    const r = await pullFromRegistry(${JSON.stringify(`${reg.host}/tls/app:v1`)}, { insecure: false, tmpDir: ${JSON.stringify(work)}, quiet: true });
    console.log(JSON.stringify({ kind: r.kind, layers: r.layers.length }));
    await r.dispose();`;
  const { stdout } = await exec(process.execPath, ["--input-type=module", "-e", script], {
    env: { ...process.env, NODE_EXTRA_CA_CERTS: reg.caFile },
  });
  assert.deepEqual(JSON.parse(stdout), { kind: "image", layers: 1 });
});
