import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { parseTokenResponse, parseWwwAuthenticate } from "../src/registry/auth.js";
import { findCredentials } from "../src/registry/credentials.js";
import { pickPlatform } from "../src/registry/manifest.js";
import { apiHost, normalizeReference, parseReference } from "../src/registry/reference.js";
import { KindlingError } from "../src/util/errors.js";

const digest = `sha256:${"a".repeat(64)}`;

test("references follow docker's defaulting rules", () => {
  assert.deepEqual(parseReference("busybox"), {
    registry: "docker.io",
    repository: "library/busybox",
    tag: "latest",
    digest: undefined,
  });
  assert.equal(normalizeReference("user/app:1.0"), "docker.io/user/app:1.0");
  assert.equal(normalizeReference("docker://127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b:latest");
  assert.equal(normalizeReference("localhost/app"), "localhost/app:latest");
  assert.equal(normalizeReference(`ghcr.io/o/r:v1@${digest}`), `ghcr.io/o/r:v1@${digest}`);
  assert.deepEqual(parseReference(`127.0.0.1:5000/x@${digest}`), {
    registry: "127.0.0.1:5000",
    repository: "x",
    tag: undefined,
    digest,
  });
  assert.equal(apiHost("docker.io"), "registry-1.docker.io");
  for (const bad of ["", "UPPER/case", "a:b:c", "x@sha256:short", "a//b", "-x"]) {
    assert.throws(() => parseReference(bad), KindlingError, bad);
  }
});

test("WWW-Authenticate challenges are parsed, quoted values included", () => {
  assert.deepEqual(
    parseWwwAuthenticate(
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
    ),
    [
      {
        scheme: "bearer",
        params: {
          realm: "https://auth.docker.io/token",
          service: "registry.docker.io",
          scope: "repository:library/busybox:pull",
        },
      },
    ],
  );
  assert.deepEqual(
    parseWwwAuthenticate('Basic realm="a \\"b\\", c", Bearer realm=x, error=insufficient_scope'),
    [
      { scheme: "basic", params: { realm: 'a "b", c' } },
      { scheme: "bearer", params: { realm: "x", error: "insufficient_scope" } },
    ],
  );
  assert.deepEqual(parseWwwAuthenticate(""), []);
  assert.equal(parseTokenResponse({ access_token: "t" }, 0)?.token, "t");
  assert.equal(parseTokenResponse({ token: "t", expires_in: 300 }, 0)?.expiresAt, 290_000);
  assert.equal(parseTokenResponse({}), undefined);
});

test("credentials: env beats the auth file; auth file keys match by host", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "kindling-creds-"));
  try {
    const file = path.join(dir, "config.json");
    await writeFile(
      file,
      JSON.stringify({
        auths: {
          "https://index.docker.io/v1/": { auth: Buffer.from("hub:pw").toString("base64") },
          "reg.example:5000": { username: "u", password: "p" },
        },
      }),
    );
    const env = { KINDLING_AUTH_FILE: file };
    assert.equal((await findCredentials("docker.io", env))?.username, "hub");
    assert.deepEqual(await findCredentials("reg.example:5000", env), {
      username: "u",
      password: "p",
      source: file,
    });
    assert.equal(await findCredentials("other.example", env), undefined);
    const fromEnv = await findCredentials("reg.example:5000", {
      ...env,
      KINDLING_REGISTRY_USER: "e",
      KINDLING_REGISTRY_PASSWORD: "q",
    });
    assert.equal(fromEnv?.username, "e");
    assert.equal(
      await findCredentials("x", { KINDLING_AUTH_FILE: path.join(dir, "missing.json") }),
      undefined,
    );
    await writeFile(file, "{not json");
    await assert.rejects(findCredentials("x", env), /not valid JSON/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("platform choice: linux/amd64 only", () => {
  const d = (os: string, architecture: string, variant?: string) => ({
    mediaType: "m",
    digest,
    size: 1,
    platform: { os, architecture, variant },
  });
  const amd = d("linux", "amd64");
  assert.equal(pickPlatform([d("linux", "arm64"), d("windows", "amd64"), amd]), amd);
  assert.equal(pickPlatform([d("linux", "arm64"), d("unknown", "unknown")]), undefined);
});
