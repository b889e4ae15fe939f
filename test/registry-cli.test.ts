import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, rm, symlink } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { gzipSync } from "node:zlib";
import { runCli } from "./helpers/cli.js";
import {
  loadOciLayout,
  MT,
  OciLayoutWriter,
  startBearerProxy,
  startRegistry,
  type TestRegistry,
  tarDir,
} from "./helpers/registry.js";

// `kindling image pull/push` through the CLI against a real registry, with two KINDLING_HOMEs as two
// workers: worker A pulls and converts, pushes the converted image; worker B pulls only its index.

let reg: TestRegistry;
let work: string;

function kindling(home: string, args: string[], env: Record<string, string> = {}) {
  return runCli(args, { home: path.join(work, home), env: { KINDLING_AUTH_FILE: "/nonexistent", ...env } });
}

before(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "kindling-regcli-"));
  reg = await startRegistry({ auth: "basic", users: { ci: "pw" } });
  const root = path.join(work, "root");
  await mkdir(path.join(root, "bin"), { recursive: true });
  await copyFile("/bin/busybox", path.join(root, "bin", "busybox"));
  await symlink("busybox", path.join(root, "bin", "sh"));
  const layout = await OciLayoutWriter.create(path.join(work, "layout"));
  const img = await layout.image([{ data: gzipSync(await tarDir(root)), mediaType: MT.layerGzip }], {
    config: { Cmd: ["/bin/sh"] },
  });
  await layout.tag(img, "v1");
  await loadOciLayout(reg, layout.dir, "v1", "cli/busybox");
});

after(async () => {
  await reg?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

test("pull, push as a Kindling image, and a lazy pull on another worker", async () => {
  const creds = { KINDLING_REGISTRY_USER: "ci", KINDLING_REGISTRY_PASSWORD: "pw" };
  const pulled = await kindling("a", ["image", "pull", `${reg.host}/cli/busybox:v1`, "--insecure"], creds);
  assert.equal(pulled.code, 0, pulled.stderr);
  const digest = pulled.stdout.trim().split(" ").at(-1)!;
  assert.match(digest, /^sha256:[0-9a-f]{64}$/);

  const pushed = await kindling(
    "a",
    ["image", "push", `${reg.host}/cli/busybox:v1`, `${reg.host}/cli/busybox-kindling:v1`, "--insecure"],
    creds,
  );
  assert.equal(pushed.code, 0, pushed.stderr);

  // No lazy daemon after the pull (its prefetch would fetch chunks; image-registry.test covers it).
  const lazy = await kindling("b", ["image", "pull", `${reg.host}/cli/busybox-kindling:v1`, "--insecure"], {
    ...creds,
    KINDLING_PULL_START_DAEMON: "0",
  });
  assert.equal(lazy.code, 0, lazy.stderr);
  const inspect = await kindling("b", ["image", "inspect", `${reg.host}/cli/busybox-kindling:v1`, "--json"]);
  assert.equal(inspect.code, 0, inspect.stderr);
  const info = JSON.parse(inspect.stdout) as { digest: string; localBytes: number; origin: { kind: string } };
  assert.equal(info.digest, digest, "the same content address on both workers");
  assert.equal(info.origin.kind, "registry");
  assert.equal(info.localBytes, 0, "no chunk was fetched");
});

test("a registry error reaches the user as one line naming the problem, exit status 125", async () => {
  const res = await kindling("c", ["image", "pull", `${reg.host}/cli/busybox:v1`, "--insecure"], {
    KINDLING_REGISTRY_USER: "ci",
    KINDLING_REGISTRY_PASSWORD: "wrong",
  });
  assert.equal(res.code, 125);
  assert.match(res.stderr, /returned 401 .*check credentials/);
  assert.doesNotMatch(res.stderr, /\n\s+at /, "no stack trace");
});

test("the bearer flow works from the CLI too", async () => {
  const open = await startRegistry();
  const proxy = await startBearerProxy(open);
  try {
    await loadOciLayout(open, path.join(work, "layout"), "v1", "cli/open");
    const res = await kindling("d", ["image", "pull", `${proxy.host}/cli/open:v1`, "--insecure"]);
    assert.equal(res.code, 0, res.stderr);
    assert.ok(proxy.tokenRequests.length >= 1);
  } finally {
    await proxy.stop();
    await open.stop();
  }
});
