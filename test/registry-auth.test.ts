import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { RegistryChunkSource } from "../src/registry/chunks.js";
import { sha256Digest } from "../src/registry/manifest.js";
import { pullFromRegistry } from "../src/registry/pull.js";
import { pushKindlingImage } from "../src/registry/push.js";
import { KindlingError } from "../src/util/errors.js";
import {
  type BearerProxy,
  filesLayout,
  loadOciLayout,
  startBearerProxy,
  startRegistry,
  type TestRegistry,
  tinyKindlingImage,
} from "./helpers/registry.js";

// Basic auth (docker-registry's htpasswd) with credentials from env or a docker-style auth file, and
// the Bearer token flow through a token-auth proxy in front of a registry.

const ENV_KEYS = ["KINDLING_AUTH_FILE", "KINDLING_REGISTRY_USER", "KINDLING_REGISTRY_PASSWORD"] as const;
const savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));

let work: string;
let tmpDir: string;
let layoutDir: string;
let authFile: string;

function setEnv(vars: Partial<Record<(typeof ENV_KEYS)[number], string>>) {
  for (const k of ENV_KEYS) delete process.env[k];
  process.env.KINDLING_AUTH_FILE = authFile; // never the developer's ~/.docker/config.json
  Object.assign(process.env, vars);
}

const pull = (ref: string) => pullFromRegistry(ref, { insecure: true, tmpDir, quiet: true });

before(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "kindling-auth-"));
  tmpDir = path.join(work, "tmp");
  authFile = path.join(work, "auth.json");
  await mkdir(tmpDir);
  layoutDir = (await filesLayout(path.join(work, "layout"))).dir;
});

after(async () => {
  for (const k of ENV_KEYS) {
    if (savedEnv[k] === undefined) delete process.env[k];
    else process.env[k] = savedEnv[k];
  }
  if (work) await rm(work, { recursive: true, force: true });
});

describe("basic auth (htpasswd)", () => {
  let reg: TestRegistry;
  before(async () => {
    reg = await startRegistry({ auth: "basic", users: { alice: "s3cret:with-colon" } });
    await loadOciLayout(reg, layoutDir, "v1", "private/app");
  });
  after(() => reg?.stop());

  test("without credentials: 401 and how to supply them", async () => {
    setEnv({});
    await assert.rejects(
      pull(`${reg.host}/private/app:v1`),
      (err: Error) =>
        err instanceof KindlingError &&
        err.message.includes(`registry ${reg.host} returned 401`) &&
        err.message.includes("KINDLING_REGISTRY_USER"),
    );
  });

  test("credentials from KINDLING_REGISTRY_USER / KINDLING_REGISTRY_PASSWORD", async () => {
    setEnv({ KINDLING_REGISTRY_USER: "alice", KINDLING_REGISTRY_PASSWORD: "s3cret:with-colon" });
    const r = await pull(`${reg.host}/private/app:v1`);
    assert.equal(r.kind, "image");
    if (r.kind === "image") await r.dispose();
  });

  test("credentials from a docker-style auth file (base64 auth, http:// key)", async () => {
    const auth = Buffer.from("alice:s3cret:with-colon").toString("base64");
    await writeFile(
      authFile,
      JSON.stringify({ auths: { "other.example": { auth: "eDp5" }, [`http://${reg.host}`]: { auth } } }),
    );
    setEnv({});
    const r = await pull(`${reg.host}/private/app:v1`);
    assert.equal(r.kind, "image");
    if (r.kind === "image") await r.dispose();
    await rm(authFile);
  });

  test("a wrong password says to check credentials and where they came from", async () => {
    setEnv({ KINDLING_REGISTRY_USER: "alice", KINDLING_REGISTRY_PASSWORD: "wrong" });
    await assert.rejects(
      pull(`${reg.host}/private/app:v1`),
      /returned 401 for GET .*: check credentials \(from KINDLING_REGISTRY_USER/,
    );
    assert.deepEqual(await readdir(tmpDir), []);
  });

  test("push and chunk fetches authenticate too", async () => {
    setEnv({ KINDLING_REGISTRY_USER: "alice", KINDLING_REGISTRY_PASSWORD: "s3cret:with-colon" });
    const { image, chunk } = tinyKindlingImage();
    await pushKindlingImage(`${reg.host}/private/kindling:v1`, { insecure: true, quiet: true }, image);
    const r = await pull(`${reg.host}/private/kindling:v1`);
    assert.equal(r.kind, "kindling");
    if (r.kind !== "kindling") return;
    assert.deepEqual(await new RegistryChunkSource(r.origin).fetch(sha256Digest(chunk), chunk.length), chunk);
  });
});

describe("bearer token flow", () => {
  let reg: TestRegistry;
  let proxy: BearerProxy;
  before(async () => {
    reg = await startRegistry();
    await loadOciLayout(reg, layoutDir, "v1", "public/app");
    proxy = await startBearerProxy(reg);
  });
  after(async () => {
    await proxy?.stop();
    await reg?.stop();
  });

  test("fetches an anonymous token from the realm with service and scope, then pulls", async () => {
    setEnv({});
    const r = await pull(`${proxy.host}/public/app:v1`);
    assert.equal(r.kind, "image");
    if (r.kind === "image") await r.dispose();
    assert.ok(proxy.tokenRequests.length >= 1);
    const q = proxy.tokenRequests[0]!;
    assert.equal(q.get("service"), "kindling-test-registry");
    assert.deepEqual(q.getAll("scope"), ["repository:public/app:pull"]);
    assert.equal(proxy.tokenAuth[0], "", "anonymous");
    assert.equal(proxy.tokenRequests.length, 1, "one token serves the manifest, config and layers");
  });

  test("concurrent chunk fetches share one token", async () => {
    setEnv({});
    const { image, chunk } = tinyKindlingImage();
    await pushKindlingImage(`${proxy.host}/public/many:v1`, { insecure: true, quiet: true }, image);
    const source = new RegistryChunkSource({
      kind: "registry",
      registry: proxy.host,
      repository: "public/many",
      reference: "v1",
      insecure: true,
    });
    const before = proxy.tokenRequests.length;
    const got = await Promise.all(
      Array.from({ length: 20 }, () => source.fetch(sha256Digest(chunk), chunk.length)),
    );
    for (const b of got) assert.deepEqual(b, chunk);
    assert.equal(proxy.tokenRequests.length, before + 1);
    proxy.revokeTokens();
    await Promise.all(Array.from({ length: 20 }, () => source.fetch(sha256Digest(chunk), chunk.length)));
    assert.equal(proxy.tokenRequests.length, before + 2, "one renewal for all of them");
  });

  test("a token the server stops accepting is replaced by a new one", async () => {
    setEnv({});
    const { image, chunk } = tinyKindlingImage();
    await pushKindlingImage(`${proxy.host}/public/lazy:v1`, { insecure: true, quiet: true }, image);
    const r = await pull(`${proxy.host}/public/lazy:v1`);
    assert.equal(r.kind, "kindling");
    if (r.kind !== "kindling") return;
    const source = new RegistryChunkSource(r.origin);
    assert.deepEqual(await source.fetch(sha256Digest(chunk), chunk.length), chunk);
    const before = proxy.tokenRequests.length;
    proxy.revokeTokens();
    assert.deepEqual(await source.fetch(sha256Digest(chunk), chunk.length), chunk);
    assert.equal(proxy.tokenRequests.length, before + 1);
  });

  test("sends Basic credentials to the token server, asks for push scope, and uploads via the proxy", async () => {
    const tokenProxy = await startBearerProxy(reg, { requireUser: { user: "bob", password: "pw" } });
    try {
      setEnv({});
      await assert.rejects(
        pull(`${tokenProxy.host}/public/app:v1`),
        /token server .* returned 401: check credentials/,
      );
      setEnv({ KINDLING_REGISTRY_USER: "bob", KINDLING_REGISTRY_PASSWORD: "pw" });
      const { image, chunk } = tinyKindlingImage();
      await pushKindlingImage(
        `${tokenProxy.host}/public/kindling:v1`,
        { insecure: true, quiet: true },
        image,
      );
      const last = tokenProxy.tokenRequests.at(-1)!;
      assert.deepEqual(last.getAll("scope"), ["repository:public/kindling:pull,push"]);
      const r = await pull(`${tokenProxy.host}/public/kindling:v1`);
      assert.equal(r.kind, "kindling");
      if (r.kind !== "kindling") return;
      const source = new RegistryChunkSource(r.origin);
      assert.deepEqual(await source.fetch(sha256Digest(chunk), chunk.length), chunk);
    } finally {
      await tokenProxy.stop();
    }
  });
});
