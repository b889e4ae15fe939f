import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { loadConfig } from "../src/config/index.js";
import { pullFromRegistry } from "../src/registry/pull.js";
import { registrySettings } from "../src/registry/settings.js";
import { runCli } from "./helpers/cli.js";
import {
  filesLayout,
  loadOciLayout,
  MT,
  OciLayoutWriter,
  startBearerProxy,
  startRegistry,
  type TestRegistry,
} from "./helpers/registry.js";

// Credentials found where docker, podman and skopeo keep them, a docker-credential-* helper, and
// `kindling login/logout`, against a real docker-registry with htpasswd auth.

const bin = fileURLToPath(new URL("../../bin/kindling", import.meta.url));
const USER = "alice";
const PASSWORD = "pa55:word-7f3e";
const basicAuth = (user: string, password: string) => Buffer.from(`${user}:${password}`).toString("base64");

let reg: TestRegistry;
let work: string;
let helperBin: string;
let ref: string;

/** An isolated environment: no credentials anywhere unless a test puts them there. */
function isolatedEnv(name: string): Record<string, string> & { HOME: string } {
  const home = path.join(work, name);
  return {
    PATH: `${helperBin}:${process.env.PATH}`,
    HOME: home,
    KINDLING_HOME: path.join(home, "kindling"),
    KINDLING_REGISTRIES_CONF: path.join(work, "registries.conf"), // marks the registry plain HTTP
    KT_HELPER_STORE: path.join(home, "helper-store.json"),
    KT_HELPER_LOG: path.join(home, "helper.log"),
  };
}

function kindling(args: string[], env: Record<string, string>, input?: string) {
  return runCli(args, { baseEnv: env, input });
}

/** Pulls in this process with settings from `env` only (the CLI path is covered by the tests below). */
async function pullWith(env: Record<string, string>, reference = ref, insecure = false) {
  const tmpDir = path.join(env.HOME!, "tmp");
  await mkdir(tmpDir, { recursive: true });
  // A credential helper runs with this process's environment (PATH, its store).
  const keys = ["PATH", "KT_HELPER_STORE", "KT_HELPER_LOG"] as const;
  const saved = keys.map((k) => process.env[k]);
  for (const k of keys) process.env[k] = env[k];
  try {
    const settings = registrySettings(loadConfig(env));
    const r = await pullFromRegistry(reference, { insecure, tmpDir, quiet: true, settings });
    if (r.kind === "image") await r.dispose();
    return r;
  } finally {
    keys.forEach((k, i) => {
      if (saved[i] === undefined) delete process.env[k];
      else process.env[k] = saved[i];
    });
  }
}

async function writeJson(file: string, body: unknown) {
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, JSON.stringify(body));
}

// A credential helper speaking the docker-credential-helpers protocol, backed by a JSON file.
const HELPER = `#!/usr/bin/env node
const fs = require("fs");
const [store, log] = [process.env.KT_HELPER_STORE, process.env.KT_HELPER_LOG];
const action = process.argv[2];
const input = fs.readFileSync(0, "utf8");
fs.appendFileSync(log, action + " " + (action === "store" ? JSON.parse(input).ServerURL : input.trim()) + "\\n");
const db = fs.existsSync(store) ? JSON.parse(fs.readFileSync(store, "utf8")) : {};
const notFound = () => { process.stdout.write("credentials not found in native keychain\\n"); process.exit(1); };
if (action === "get") {
  const e = db[input.trim()];
  if (!e) notFound();
  process.stdout.write(JSON.stringify({ ServerURL: input.trim(), Username: e.Username, Secret: e.Secret }));
} else if (action === "store") {
  const c = JSON.parse(input);
  db[c.ServerURL] = c;
  fs.writeFileSync(store, JSON.stringify(db));
} else if (action === "erase") {
  if (!db[input.trim()]) notFound();
  delete db[input.trim()];
  fs.writeFileSync(store, JSON.stringify(db));
} else { process.stderr.write("unknown action\\n"); process.exit(2); }
`;

const BROKEN_HELPER = `#!/bin/sh
cat >/dev/null
echo "error getting credentials - err: exit status 1, out: GDBus.Error:org.freedesktop.Secret.Error.IsLocked" >&2
exit 1
`;

before(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "kindling-creds-"));
  helperBin = path.join(work, "bin");
  await mkdir(helperBin);
  await writeFile(path.join(helperBin, "docker-credential-kt"), HELPER);
  await writeFile(path.join(helperBin, "docker-credential-broken"), BROKEN_HELPER);
  await chmod(path.join(helperBin, "docker-credential-kt"), 0o755);
  await chmod(path.join(helperBin, "docker-credential-broken"), 0o755);
  const layout = await filesLayout(path.join(work, "layout"));
  reg = await startRegistry({ auth: "basic", users: { [USER]: PASSWORD } });
  await loadOciLayout(reg, layout.dir, "v1", "private/app");
  ref = `${reg.host}/private/app:v1`;
  // registries.conf, not --insecure, says this registry speaks plain HTTP.
  await writeFile(
    path.join(work, "registries.conf"),
    `[[registry]]\nlocation = "${reg.host}"\ninsecure = true\n`,
  );
});

after(async () => {
  await reg?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

describe("where credentials are found", () => {
  test("none anywhere: the 401 names the registry and every place searched", async () => {
    const env = isolatedEnv("none");
    const r = await kindling(["image", "pull", ref], { ...env, XDG_RUNTIME_DIR: path.join(env.HOME, "run") });
    assert.equal(r.code, 125, r.stderr);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, new RegExp(`registry ${reg.host} returned 401`));
    assert.ok(lines[0]!.includes(path.join(env.HOME, "run", "containers", "auth.json")), lines[0]);
    assert.ok(lines[0]!.includes(path.join(env.HOME, ".docker", "config.json")), lines[0]);
    assert.ok(lines[0]!.includes("KINDLING_REGISTRY_USER"), lines[0]);
    assert.ok(lines[0]!.includes(`kindling login ${reg.host}`), lines[0]);
  });

  test("~/.docker/config.json (auth, base64)", async () => {
    const env = isolatedEnv("home");
    await writeJson(path.join(env.HOME, ".docker", "config.json"), {
      auths: { [reg.host]: { auth: basicAuth(USER, PASSWORD) } },
    });
    assert.equal((await pullWith(env)).kind, "image");
  });

  test("$DOCKER_CONFIG/config.json (username/password) instead of ~/.docker", async () => {
    const env: Record<string, string> = {
      ...isolatedEnv("dockerconfig"),
      DOCKER_CONFIG: path.join(work, "dockerconfig", "cfg"),
    };
    await writeJson(path.join(env.HOME, ".docker", "config.json"), {
      auths: { [reg.host]: { auth: basicAuth(USER, "wrong") } },
    });
    await writeJson(path.join(env.DOCKER_CONFIG, "config.json"), {
      auths: { [`https://${reg.host}`]: { username: USER, password: PASSWORD } },
    });
    assert.equal((await pullWith(env)).kind, "image");
  });

  test("$XDG_RUNTIME_DIR/containers/auth.json comes before the docker config", async () => {
    const env: Record<string, string> = {
      ...isolatedEnv("xdg"),
      XDG_RUNTIME_DIR: path.join(work, "xdg", "run"),
    };
    await writeJson(path.join(env.HOME, ".docker", "config.json"), {
      auths: { [reg.host]: { auth: basicAuth(USER, PASSWORD) } },
    });
    const xdgFile = path.join(env.XDG_RUNTIME_DIR, "containers", "auth.json");
    await writeJson(xdgFile, { auths: { [`${reg.host}/private`]: { auth: basicAuth(USER, "wrong") } } });
    // The containers file wins (a per-namespace key), so its wrong password is what the registry sees.
    await assert.rejects(pullWith(env), (err: Error) => {
      assert.match(err.message, /returned 401 .*check credentials \(from .*auth\.json \(auths\["127/);
      assert.ok(err.message.includes(xdgFile), err.message);
      return true;
    });
    await writeJson(xdgFile, { auths: { [reg.host]: { auth: basicAuth(USER, PASSWORD) } } });
    assert.equal((await pullWith(env)).kind, "image");
  });

  test("REGISTRY_AUTH_FILE is the only file read when set; the debug line says which source won", async () => {
    const env = isolatedEnv("regauth");
    const file = path.join(env.HOME, "podman-auth.json");
    await writeJson(file, { auths: { [reg.host]: { auth: basicAuth(USER, PASSWORD) } } });
    await writeJson(path.join(env.HOME, ".docker", "config.json"), {
      auths: { [reg.host]: { auth: basicAuth(USER, "wrong") } },
    });
    const r = await kindling(["--debug", "image", "pull", ref], { ...env, REGISTRY_AUTH_FILE: file });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`kindling: debug: credentials for ${reg.host}: using ${file}`));
    const viaEnv = await kindling(["image", "ls"], { ...env, KINDLING_DEBUG: "1", REGISTRY_AUTH_FILE: file });
    assert.equal(viaEnv.code, 0, viaEnv.stderr);
  });

  test("KINDLING_REGISTRY_USER/PASSWORD beat every file", async () => {
    const env: Record<string, string> = {
      ...isolatedEnv("envcreds"),
      KINDLING_REGISTRY_USER: USER,
      KINDLING_REGISTRY_PASSWORD: PASSWORD,
    };
    await writeJson(path.join(env.HOME, ".docker", "config.json"), {
      auths: { [reg.host]: { auth: basicAuth(USER, "wrong") } },
    });
    assert.equal((await pullWith(env)).kind, "image");
  });

  test("credHelpers: docker-credential-NAME get, the server on stdin", async () => {
    const env = isolatedEnv("helper");
    await writeJson(path.join(env.HOME, ".docker", "config.json"), {
      auths: { [reg.host]: { auth: basicAuth(USER, "wrong") } },
      credHelpers: { [reg.host]: "kt" },
    });
    await writeJson(env.KT_HELPER_STORE, { [reg.host]: { Username: USER, Secret: PASSWORD } });
    assert.equal((await pullWith(env)).kind, "image");
    assert.equal(await readFile(env.KT_HELPER_LOG, "utf8"), `get ${reg.host}\n`);
  });

  test("a failing helper is reported in one line naming it", async () => {
    const env = isolatedEnv("broken");
    await writeJson(path.join(env.HOME, ".docker", "config.json"), { credsStore: "broken" });
    const r = await kindling(["image", "pull", ref], env);
    assert.equal(r.code, 125);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(
      r.stderr,
      /^kindling: credential helper docker-credential-broken get failed \(status 1\): error getting credentials .*IsLocked\n$/,
    );
    await writeJson(path.join(env.HOME, ".docker", "config.json"), { credsStore: "absent" });
    const missing = await kindling(["image", "pull", ref], env);
    assert.match(missing.stderr, /^kindling: credential helper docker-credential-absent is not installed/);
  });
});

describe("kindling login / logout", () => {
  test("login checks the password first, stores it where docker would, logout removes it", async () => {
    const env = isolatedEnv("login");
    const config = path.join(env.HOME, ".docker", "config.json");
    const wrong = await kindling(["login", reg.host, "-u", USER, "--password-stdin"], env, "nope\n");
    assert.equal(wrong.code, 125);
    assert.match(wrong.stderr, /returned 401 .*check credentials \(from the credentials given\)/);
    await assert.rejects(stat(config), { code: "ENOENT" }, "nothing stored after a failed login");

    const ok = await kindling(
      ["login", `http://${reg.host}/`, "-u", USER, "--password-stdin", "--insecure"],
      env,
      `${PASSWORD}\n`,
    );
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(
      ok.stdout,
      new RegExp(`^Login Succeeded \\(credentials for ${reg.host} stored in ${config}\\)`),
    );
    assert.ok(!`${ok.stdout}${ok.stderr}`.includes(PASSWORD), "the password is never printed");
    assert.equal((await stat(config)).mode & 0o777, 0o600);
    const stored = JSON.parse(await readFile(config, "utf8")) as { auths: Record<string, { auth: string }> };
    assert.equal(stored.auths[reg.host]?.auth, basicAuth(USER, PASSWORD));

    const pulled = await kindling(["image", "pull", ref], env);
    assert.equal(pulled.code, 0, pulled.stderr);

    const out = await kindling(["logout", reg.host], env);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, `Removed login credentials for ${reg.host} from ${config}\n`);
    assert.deepEqual(JSON.parse(await readFile(config, "utf8")), { auths: {} });
    assert.equal((await kindling(["logout", reg.host], env)).stdout, `Not logged in to ${reg.host}\n`);
  });

  test("login --containers writes the containers auth file; without a TTY the password must come on stdin", async () => {
    const env = {
      ...isolatedEnv("login-containers"),
      XDG_RUNTIME_DIR: path.join(work, "login-containers", "run"),
    };
    const noTty = await kindling(["login", reg.host, "-u", USER], env, "");
    assert.equal(noTty.code, 125);
    assert.match(
      noTty.stderr,
      /^kindling: no terminal to ask for the password: pipe it in with --password-stdin/,
    );
    const r = await kindling(
      ["login", reg.host, "-u", USER, "--password-stdin", "--containers"],
      env,
      PASSWORD,
    );
    assert.equal(r.code, 0, r.stderr);
    const file = path.join(env.XDG_RUNTIME_DIR, "containers", "auth.json");
    const stored = JSON.parse(await readFile(file, "utf8")) as { auths: Record<string, { auth: string }> };
    assert.equal(stored.auths[reg.host]?.auth, basicAuth(USER, PASSWORD));
    const pulled = await kindling(["--debug", "image", "pull", ref], env);
    assert.equal(pulled.code, 0, pulled.stderr);
    assert.ok(pulled.stderr.includes(`using ${file}`), pulled.stderr);
    assert.equal((await kindling(["logout", reg.host, "--containers"], env)).code, 0);
  });

  test("with credsStore, login stores through the helper and logout erases there", async () => {
    const env = isolatedEnv("login-helper");
    const config = path.join(env.HOME, ".docker", "config.json");
    await writeJson(config, { credsStore: "kt" });
    const r = await kindling(["login", reg.host, "-u", USER, "--password-stdin"], env, PASSWORD);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /stored in docker-credential-kt\)/);
    const db = JSON.parse(await readFile(env.KT_HELPER_STORE, "utf8")) as Record<string, { Secret: string }>;
    assert.equal(db[reg.host]?.Secret, PASSWORD);
    assert.deepEqual(
      JSON.parse(await readFile(config, "utf8")),
      { credsStore: "kt" },
      "no password in the file",
    );
    assert.equal((await kindling(["image", "pull", ref], env)).code, 0);
    const out = await kindling(["logout", reg.host], env);
    assert.equal(out.stdout, `Removed login credentials for ${reg.host} from docker-credential-kt\n`);
    assert.deepEqual(JSON.parse(await readFile(env.KT_HELPER_STORE, "utf8")), {});
  });

  test("on a terminal the user and password are asked for, and the password is not echoed", async () => {
    const env = isolatedEnv("tty");
    // script(1) gives the CLI a pseudo-terminal; answers are typed only once their prompt is shown.
    const child = spawn("script", ["-qec", `${bin} login ${reg.host}`, "/dev/null"], { env });
    let screen = "";
    child.stdout.on("data", (d: Buffer) => {
      screen += d.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    const waitFor = async (text: string) => {
      const deadline = Date.now() + 30_000;
      while (!screen.includes(text)) {
        if (Date.now() > deadline) throw new Error(`no "${text}" prompt within 30 s: ${screen}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    try {
      await waitFor("Username: ");
      child.stdin.write(`${USER}\n`);
      await waitFor("Password: ");
      child.stdin.write(`${PASSWORD}\n`);
      await waitFor("Login Succeeded");
    } finally {
      child.stdin.end();
      const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
      await exited;
      clearTimeout(timer);
    }
    assert.ok(!screen.includes(PASSWORD), `the password was echoed: ${screen}`);
    assert.ok(screen.includes(USER), "the user name is echoed as typed");
    const stored = JSON.parse(await readFile(path.join(env.HOME, ".docker", "config.json"), "utf8")) as {
      auths: Record<string, { auth: string }>;
    };
    assert.equal(stored.auths[reg.host]?.auth, basicAuth(USER, PASSWORD));
  });

  test("bad registry names are refused in one line", async () => {
    const r = await kindling(
      ["login", "not a host", "--password-stdin", "-u", "x"],
      isolatedEnv("bad"),
      "pw",
    );
    assert.equal(r.code, 125);
    assert.match(r.stderr, /^kindling: invalid registry "not a host": expected a host\[:port\]/);
  });
});

describe("identity tokens", () => {
  test("an identitytoken is exchanged at the token server (OAuth2 refresh_token grant)", async () => {
    // The token front forwards without credentials, so an anonymous registry sits behind it.
    const open = await startRegistry();
    const front = await startBearerProxy(open, { refreshToken: "refresh-123" });
    try {
      const layout = await OciLayoutWriter.create(path.join(work, "layout-open"));
      await layout.tag(
        await layout.image([{ data: gzipSync(Buffer.alloc(1024)), mediaType: MT.layerGzip }]),
        "v1",
      );
      await loadOciLayout(open, layout.dir, "v1", "public/app");
      const env = isolatedEnv("identity");
      await writeJson(path.join(env.HOME, ".docker", "config.json"), {
        auths: { [front.host]: { auth: basicAuth(USER, ""), identitytoken: "refresh-123" } },
      });
      const tmpDir = path.join(env.HOME, "tmp");
      await mkdir(tmpDir, { recursive: true });
      const r = await pullFromRegistry(`${front.host}/public/app:v1`, {
        insecure: true,
        tmpDir,
        quiet: true,
        settings: registrySettings(loadConfig(env)),
      });
      if (r.kind === "image") await r.dispose();
      const grant = front.tokenRequests.at(-1)!;
      assert.equal(grant.get("grant_type"), "refresh_token");
      assert.equal(grant.get("scope"), "repository:public/app:pull");
      assert.equal(front.tokenAuth.at(-1), "", "no Basic header with an identity token");

      // A helper answering with the user "<token>" gives an identity token too (docker's convention).
      const viaHelper = isolatedEnv("identity-helper");
      await writeJson(path.join(viaHelper.HOME, ".docker", "config.json"), {
        credHelpers: { [front.host]: "kt" },
      });
      await writeJson(viaHelper.KT_HELPER_STORE!, {
        [front.host]: { Username: "<token>", Secret: "refresh-123" },
      });
      const before = front.tokenRequests.length;
      assert.equal((await pullWith(viaHelper, `${front.host}/public/app:v1`, true)).kind, "image");
      assert.equal(front.tokenRequests.at(before)?.get("refresh_token"), "refresh-123");
    } finally {
      await front.stop();
      await open.stop();
    }
  });
});
