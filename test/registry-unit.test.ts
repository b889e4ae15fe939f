import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { loadConfig } from "../src/config/index.js";
import { parseTokenResponse, parseWwwAuthenticate } from "../src/registry/auth.js";
import { lookupKeys, normalizeKey } from "../src/registry/authfile.js";
import { authFiles, ENV_CREDENTIALS, searchCredentials } from "../src/registry/credentials.js";
import { resolveEndpoints } from "../src/registry/endpoints.js";
import { pickPlatform } from "../src/registry/manifest.js";
import { hostPlatform, parsePlatform } from "../src/registry/platform.js";
import { apiHost, normalizeReference, parseReference } from "../src/registry/reference.js";
import { parseRegistriesConf } from "../src/registry/registries-conf.js";
import { registrySettings } from "../src/registry/settings.js";
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
          "reg.example:5000/team/app": { username: "team", password: "t" },
        },
      }),
    );
    const s = { ...registrySettings(loadConfig({ HOME: dir })), kindlingAuthFile: file };
    const find = async (reg: string, repo = "x/y", settings = s) =>
      (await searchCredentials(reg, repo, settings)).credentials;
    assert.equal((await find("docker.io"))?.username, "hub");
    assert.deepEqual(await find("reg.example:5000"), {
      username: "u",
      password: "p",
      identityToken: undefined,
      source: `${file} (auths["reg.example:5000"])`,
    });
    assert.equal((await find("reg.example:5000", "team/app"))?.username, "team", "most specific key first");
    assert.equal(await find("other.example"), undefined);
    assert.equal((await find("reg.example:5000", "x", { ...s, user: "e", password: "q" }))?.username, "e");
    const missing = { ...s, kindlingAuthFile: path.join(dir, "missing.json") };
    assert.equal(await find("x", "y", missing), undefined);
    assert.deepEqual((await searchCredentials("x", "y", missing)).searched, [
      ENV_CREDENTIALS,
      `${path.join(dir, "missing.json")} (absent)`,
    ]);
    await writeFile(file, "{not json");
    await assert.rejects(find("x"), /not valid JSON/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("credentials: the search order of docker and the containers tools", () => {
  const base = registrySettings(loadConfig({ HOME: "/h" }));
  assert.deepEqual(authFiles(base), ["/h/.docker/config.json"]);
  assert.deepEqual(authFiles({ ...base, xdgRuntimeDir: "/run/user/7", dockerConfig: "/d" }), [
    "/run/user/7/containers/auth.json",
    "/d/config.json",
  ]);
  assert.deepEqual(authFiles({ ...base, registryAuthFile: "/r.json", xdgRuntimeDir: "/x" }), ["/r.json"]);
  assert.deepEqual(authFiles({ ...base, kindlingAuthFile: "/k.json", registryAuthFile: "/r.json" }), [
    "/k.json",
  ]);
  assert.equal(normalizeKey("https://index.docker.io/v1/"), "docker.io");
  assert.equal(normalizeKey("http://Reg:5000/v2/"), "reg:5000");
  assert.equal(normalizeKey("reg:5000/ns/repo"), "reg:5000/ns/repo");
  assert.deepEqual(lookupKeys("reg", "a/b"), ["reg/a/b", "reg/a", "reg"]);
});

test("registries.conf: prefixes, locations, mirrors and insecure", () => {
  const conf = parseRegistriesConf(
    `
unqualified-search-registries = ["docker.io"]
[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "mirror.local:5000"
insecure = true
[[registry.mirror]]
location = "https://digests.local/hub"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "reg.example/team"
location = "reg2.example/moved"
insecure = true

[[registry]]
location = "bad.example"
blocked = true
`,
    "/etc/r.conf",
  );
  const tag = { insecure: false, byDigest: false };
  assert.deepEqual(resolveEndpoints(conf, "docker.io", "library/busybox", tag), [
    { registry: "mirror.local:5000", repository: "library/busybox", insecure: true, mirror: true },
    { registry: "docker.io", repository: "library/busybox", insecure: false, mirror: false },
  ]);
  assert.deepEqual(
    resolveEndpoints(conf, "docker.io", "library/busybox", { insecure: false, byDigest: true }).map(
      (e) => e.registry,
    ),
    ["mirror.local:5000", "digests.local", "docker.io"],
  );
  assert.equal(
    resolveEndpoints(conf, "docker.io", "library/busybox", { insecure: false, byDigest: true })[1]
      ?.repository,
    "hub/library/busybox",
  );
  assert.deepEqual(resolveEndpoints(conf, "reg.example", "team/app", tag), [
    { registry: "reg2.example", repository: "moved/app", insecure: true, mirror: false },
  ]);
  assert.deepEqual(resolveEndpoints(conf, "reg.example", "other/app", tag), [
    { registry: "reg.example", repository: "other/app", insecure: false, mirror: false },
  ]);
  assert.throws(() => resolveEndpoints(conf, "bad.example", "x", tag), /blocked by \/etc\/r.conf/);
  assert.throws(() => parseRegistriesConf("[[registry]\n", "f"), /f is not valid TOML at line 1/);
  assert.throws(() => parseRegistriesConf("[registries.search]\nregistries = []\n", "f"), /v1 format/);
  assert.throws(
    () => parseRegistriesConf('[[registry]]\nlocation = "a"\ninsecure = "yes"\n', "f"),
    /insecure must be true or false/,
  );
});

test("platforms: parsing, aliases and variants", () => {
  assert.deepEqual(parsePlatform("linux/arm64/v8"), { os: "linux", architecture: "arm64", variant: "v8" });
  assert.deepEqual(parsePlatform("linux/x86_64"), { os: "linux", architecture: "amd64" });
  assert.throws(() => parsePlatform("linux"), /invalid platform "linux": expected os\/arch\[\/variant\]/);
  assert.equal(hostPlatform().os, "linux");
});

test("platform choice from an index", () => {
  const d = (os: string, architecture: string, variant?: string) => ({
    mediaType: "m",
    digest,
    size: 1,
    platform: { os, architecture, variant },
  });
  const amd = d("linux", "amd64");
  const amd64 = { os: "linux", architecture: "amd64" };
  assert.equal(pickPlatform([d("linux", "arm64"), d("windows", "amd64"), amd], amd64), amd);
  assert.equal(pickPlatform([d("linux", "arm64"), d("unknown", "unknown")], amd64), undefined);
  assert.equal(pickPlatform([d("linux", "amd64", "v3"), amd], amd64), amd, "the baseline before v3");
  const v7 = d("linux", "arm", "v7");
  assert.equal(
    pickPlatform([d("linux", "arm", "v6"), v7], { os: "linux", architecture: "arm", variant: "v7" }),
    v7,
  );
  const arm64 = d("linux", "arm64");
  assert.equal(pickPlatform([v7, arm64], { os: "linux", architecture: "arm64", variant: "v8" }), arm64);
});
