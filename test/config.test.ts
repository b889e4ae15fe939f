import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { test } from "node:test";
import {
  ConfigError,
  config,
  configure,
  formatEnvTable,
  loadConfig,
  RUNTIME_CHOICES,
  resolve,
  SETTINGS,
  useConfig,
  withConfig,
} from "../src/config/index.js";
import { cleanupStale, openLazyImage } from "../src/lazy/index.js";
import { RUNTIME_NAMES } from "../src/runtime/types.js";
import { KindlingHome } from "../src/util/home.js";
import { indexBytes } from "./helpers/blockindex.js";
import { runCli } from "./helpers/cli.js";
import { REPO } from "./helpers/fixtures.js";

test("defaults when nothing is set", () => {
  const c = loadConfig({});
  assert.equal(c.home, "/var/lib/kindling");
  assert.equal(c.runtime, "auto");
  assert.equal(c.fetchTimeoutMs, 30_000);
  assert.equal(c.fetchAttemptTimeoutMs, 10_000);
  assert.equal(c.fetchRetries, 3);
  assert.equal(c.lazyIdleMs, 30_000);
  assert.equal(c.buildTmpfs, true);
  assert.equal(c.buildTmpfsMaxBytes, 4 * 1024 ** 3);
  assert.equal(c.lazyKernelCache, true);
  assert.equal(c.lazyDirectIo, false);
  assert.equal(c.vmDebug, false);
  assert.equal(c.firecracker, "firecracker");
  assert.equal(c.jailer, "jailer");
  assert.ok(Object.isFrozen(c));
});

test("environment values are parsed into their types; an empty variable counts as unset", () => {
  const c = loadConfig({
    KINDLING_HOME: "/tmp/h",
    KINDLING_FETCH_TIMEOUT_MS: "500",
    KINDLING_FETCH_RETRIES: "0",
    KINDLING_BUILD_TMPFS: "0",
    KINDLING_LAZY_DIRECT_IO: "true",
    KINDLING_VM_DEBUG: "1",
    KINDLING_RUNTIME: "",
  });
  assert.equal(c.home, "/tmp/h");
  assert.equal(c.fetchTimeoutMs, 500);
  // a default that depends on another setting follows it
  assert.equal(c.fetchAttemptTimeoutMs, 500);
  assert.equal(c.fetchRetries, 0);
  assert.equal(c.buildTmpfs, false);
  assert.equal(c.lazyDirectIo, true);
  assert.equal(c.vmDebug, true);
  assert.equal(c.runtime, "auto");
});

test("precedence: flag > environment > default, and sources say which", () => {
  assert.equal(loadConfig({}).runtime, "auto");
  assert.equal(loadConfig({ KINDLING_RUNTIME: "runc" }).runtime, "runc");
  const r = resolve({ KINDLING_RUNTIME: "runc" }, { runtime: "qemu" });
  assert.equal(r.config.runtime, "qemu");
  assert.equal(r.sources.runtime, "flag");
  assert.equal(resolve({ KINDLING_RUNTIME: "runc" }).sources.runtime, "env");
  assert.equal(resolve({}).sources.runtime, "default");
  // an absent flag (undefined) does not hide the variable
  assert.equal(loadConfig({ KINDLING_RUNTIME: "runsc" }, { runtime: undefined }).runtime, "runsc");
});

test("bad values are errors naming the variable (or flag) and the value", () => {
  const bad: [Record<string, string>, RegExp][] = [
    [
      { KINDLING_FETCH_TIMEOUT_MS: "abc" },
      /^KINDLING_FETCH_TIMEOUT_MS: invalid value "abc" \(expected a whole number >= 1\)$/,
    ],
    [{ KINDLING_FETCH_TIMEOUT_MS: "-1" }, /^KINDLING_FETCH_TIMEOUT_MS: invalid value "-1"/],
    [{ KINDLING_FETCH_TIMEOUT_MS: "0" }, /^KINDLING_FETCH_TIMEOUT_MS: invalid value "0"/],
    [{ KINDLING_FETCH_TIMEOUT_MS: "1e3" }, /^KINDLING_FETCH_TIMEOUT_MS: invalid value "1e3"/],
    [{ KINDLING_FETCH_RETRIES: "2.5" }, /^KINDLING_FETCH_RETRIES: invalid value "2.5"/],
    [{ KINDLING_LAZY_IDLE_MS: " 5" }, /^KINDLING_LAZY_IDLE_MS: invalid value " 5"/],
    [{ KINDLING_BUILD_TMPFS: "maybe" }, /^KINDLING_BUILD_TMPFS: invalid value "maybe" \(expected 1 or 0/],
    [
      { KINDLING_RUNTIME: "docker" },
      /^KINDLING_RUNTIME: unknown value "docker" \(expected one of: runc, runsc/,
    ],
  ];
  for (const [env, re] of bad) {
    assert.throws(
      () => loadConfig(env),
      (e: unknown) => e instanceof ConfigError && re.test(e.message),
      JSON.stringify(env),
    );
  }
  assert.throws(() => loadConfig({}, { runtime: "vmware" }), {
    message: /^--runtime: unknown value "vmware" \(expected one of: runc, runsc, qemu, firecracker, auto\)$/,
  });
});

test("configure() pins env + flags, and a later call keeps the earlier flags", () => {
  const a = configure({ KINDLING_RUNTIME: "runc" }, { debug: "1" });
  assert.equal(a.debug, true);
  assert.equal(a.runtime, "runc");
  const b = configure({ KINDLING_RUNTIME: "runc" }, { runtime: "qemu", debug: undefined });
  assert.equal(b.runtime, "qemu");
  assert.equal(b.debug, true, "the program's --debug survives the command's configure");
  assert.equal(config(), b);
  assert.throws(() => configure({}, { runtime: "nope" }), ConfigError);
  assert.equal(config(), b, "a failed configure leaves the pinned configuration");
  useConfig(undefined);
});

test("config() follows the environment until pinned; withConfig overrides for a test", async () => {
  useConfig(undefined);
  const before = config().lazyIdleMs;
  assert.equal(typeof before, "number");
  const pinned = useConfig(loadConfig({ KINDLING_LAZY_IDLE_MS: "7" }));
  assert.equal(config().lazyIdleMs, 7);
  await withConfig({ lazyIdleMs: 9 }, () => assert.equal(config().lazyIdleMs, 9));
  assert.equal(config(), pinned);
  useConfig(undefined);
});

test("the runtime choices are the runtimes of src/runtime plus auto", () => {
  assert.deepEqual([...RUNTIME_CHOICES].sort(), [...RUNTIME_NAMES, "auto"].sort());
});

test("every setting has a distinct KINDLING_ variable and a description", () => {
  const envs = Object.values(SETTINGS).map((s) => s.env);
  assert.equal(new Set(envs).size, envs.length);
  for (const s of Object.values(SETTINGS)) assert.ok(s.describe.length > 0, s.env);
});

test("the README's environment table is the one the settings table generates", async () => {
  const readme = await readFile(path.join(REPO, "README.md"), "utf8");
  const lines = readme.split("\n");
  const start = lines.findIndex((l) => l.startsWith("| variable | meaning | default |"));
  assert.ok(start >= 0, "README has the settings table");
  let end = start;
  while (end < lines.length && lines[end].startsWith("|")) end++;
  assert.equal(
    lines.slice(start, end).join("\n"),
    formatEnvTable(),
    "README.md's table differs from src/config/settings.ts: paste the output of formatEnvTable()",
  );
});

test("the CLI rejects a bad variable with one line naming it, exit 125", async () => {
  for (const [name, value] of [
    ["KINDLING_FETCH_TIMEOUT_MS", "abc"],
    ["KINDLING_LAZY_IDLE_MS", "-1"],
    ["KINDLING_RUNTIME", "vmware"],
  ]) {
    const r = await runCli(["image", "ls"], {
      home: "/nonexistent/kindling-config-test",
      env: { [name]: value },
      timeoutMs: 30_000,
    });
    assert.equal(r.code, 125, `${name}=${value}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^kindling: ${name}: (invalid|unknown) value "${value}" \\(expected `));
  }
  const r = await runCli(["run", "--runtime", "vmware", "img"], {
    home: "/nonexistent/kindling-config-test",
    timeoutMs: 30_000,
  });
  assert.equal(r.code, 125, r.stderr);
  assert.match(r.stderr, /^kindling: --runtime: unknown value "vmware" \(expected one of/);
});

test("only src/config and src/cli read the environment (also the ways biome's noProcessEnv misses)", async () => {
  const src = path.join(REPO, "src");
  const files = (await readdir(src, { recursive: true })).filter((f) => f.endsWith(".ts"));
  const offenders: string[] = [];
  for (const f of files) {
    if (/^(config|cli)\//.test(f)) continue;
    const text = await readFile(path.join(src, f), "utf8");
    if (
      /process\s*(\.\s*env\b|\[\s*["'`]env)|from\s+["'](node:)?process["']|require\(["'](node:)?process["']\)/.test(
        text,
      )
    ) {
      offenders.push(f);
    }
  }
  assert.deepEqual(offenders, [], "read settings through src/config (config(), hostEnv(), searchPath())");
});

test("kindling config shows each setting's value and source, hiding secrets", async () => {
  const r = await runCli(["--debug", "config", "--json"], {
    env: { KINDLING_FETCH_RETRIES: "5", KINDLING_REGISTRY_PASSWORD: "hunter2", KINDLING_DEBUG: "" },
    timeoutMs: 30_000,
  });
  assert.equal(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout) as { env: string; value: unknown; source: string }[];
  const row = (env: string) => rows.find((x) => x.env === env)!;
  assert.deepEqual(
    rows.map((x) => x.env),
    Object.values(SETTINGS).map((s) => s.env),
  );
  assert.deepEqual(row("KINDLING_FETCH_RETRIES"), {
    name: "fetchRetries",
    env: "KINDLING_FETCH_RETRIES",
    value: 5,
    source: "env",
  });
  assert.equal(row("KINDLING_DEBUG").source, "flag");
  assert.equal(row("KINDLING_LAZY_IDLE_MS").source, "default");
  assert.equal(row("KINDLING_REGISTRY_PASSWORD").value, "(set)");
  assert.ok(!r.stdout.includes("hunter2"));
});

test("the lazy daemon takes its settings from its parent, not from its environment", async () => {
  const home = new KindlingHome(await mkdtemp("/tmp/kindling-config-test-")).ensure();
  const data = randomBytes(256 << 10);
  const { record } = await indexBytes(home, data, 64 << 10);
  const saved = process.env.KINDLING_LAZY_KERNEL_CACHE;
  useConfig(loadConfig({}));
  // The daemon inherits this environment: were it to read its settings there, it would fail to start.
  process.env.KINDLING_LAZY_KERNEL_CACHE = "not-a-boolean";
  try {
    const lazy = await openLazyImage(home, record, "auto", { prefetch: false });
    try {
      const got = await readFile(lazy.path);
      assert.ok(got.equals(data));
    } finally {
      await lazy.close();
    }
  } finally {
    if (saved === undefined) delete process.env.KINDLING_LAZY_KERNEL_CACHE;
    else process.env.KINDLING_LAZY_KERNEL_CACHE = saved;
    useConfig(undefined);
    await cleanupStale(home);
    await rm(home.root, { recursive: true, force: true });
  }
});
