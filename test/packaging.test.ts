import assert from "node:assert/strict";
import { appendFile, mkdtemp, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { exec } from "../src/util/exec.js";
import { runCli } from "./helpers/cli.js";
import { REPO } from "./helpers/fixtures.js";

// The npm package: `npm pack`, then `npm install -g` of the tarball into a temp prefix with real
// npm, then the installed `kindling` run from a directory outside the repository.
// (The tarball is packed with --ignore-scripts: the tests run after `npm run build`, which is what
// the package's prepack script runs.)

let work: string;
let prefix: string;
let tarball: string;
let installed: string;

const NPM_TIMEOUT_MS = 300_000;

function kindling(args: string[]) {
  return runCli(args, {
    bin: path.join(prefix, "bin", "kindling"),
    cwd: work,
    home: path.join(work, "home"),
    timeoutMs: 120_000,
  });
}

before(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "kindling-pack-"));
  prefix = path.join(work, "prefix");
  const packed = await exec(
    "npm",
    ["pack", "--ignore-scripts", "--pack-destination", work, "--loglevel=error"],
    {
      cwd: REPO,
      timeout: NPM_TIMEOUT_MS,
    },
  );
  tarball = path.join(work, packed.stdout.trim().split("\n").at(-1)!);
  await exec(
    "npm",
    [
      "install",
      "-g",
      "--prefix",
      prefix,
      "--no-audit",
      "--no-fund",
      "--prefer-offline",
      "--loglevel=error",
      tarball,
    ],
    { cwd: work, timeout: NPM_TIMEOUT_MS },
  );
  installed = path.join(prefix, "lib", "node_modules", "kindling");
});

after(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

test("the tarball holds the CLI, the compiled code and the guest init with its checksum, no tests or sources", async () => {
  const files = (await exec("tar", ["-tzf", tarball])).stdout.split("\n").filter(Boolean);
  for (const f of [
    "package/bin/kindling",
    "package/dist/src/cli/main.js",
    "package/guest/build/kindling-init",
    "package/guest/build/kindling-init.sha256",
    "package/guest/kernel/kindling.config", // kindling kernel build
    "package/package.json",
  ]) {
    assert.ok(files.includes(f), `${f} in the package`);
  }
  // src/ ships as the types of the client library ("types" in exports); tests and benchmarks do not.
  const stray = files.filter(
    (f) => /^package\/(test|bench|dist\/test|dist\/bench|\.cache)\//.test(f) || f.endsWith(".map"),
  );
  assert.deepEqual(stray, []);
});

test("the installed kindling runs doctor from any directory, with a verified guest init", async () => {
  const r = await kindling(["doctor", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as { checks: { name: string; ok: boolean; detail: string }[] };
  const init = report.checks.find((c) => c.name === "guest init");
  assert.ok(init?.ok, JSON.stringify(init));
  assert.equal(init.detail, `${path.join(installed, "guest", "build", "kindling-init")} (sha256 verified)`);
  const completion = await kindling(["completion", "bash"]);
  assert.equal(completion.code, 0, completion.stderr);
  assert.match(completion.stdout, /complete -o default -F _kindling_complete kindling/);
  // The native FUSE binding loads from its prebuilt binary (install scripts of dependencies may be off).
  await exec(process.execPath, ["-e", "require('fuse-native')"], { cwd: installed, timeout: 30_000 });
  assert.ok((await readdir(path.join(installed, "node_modules"))).includes("smol-toml"));
  // The client library by the package name, through "exports".
  const lib = await exec(
    process.execPath,
    ["--input-type=module", "-e", "const m = await import('kindling'); console.log(typeof m.Kindling)"],
    { cwd: path.join(prefix, "lib"), timeout: 30_000 },
  );
  assert.equal(lib.stdout.trim(), "function");
});

test("an altered guest init is refused, naming the file and its checksum file", async () => {
  await appendFile(path.join(installed, "guest", "build", "kindling-init"), "x");
  const r = await kindling(["doctor", "--json"]);
  const report = JSON.parse(r.stdout) as { checks: { name: string; ok: boolean; detail: string }[] };
  const init = report.checks.find((c) => c.name === "guest init")!;
  assert.equal(init.ok, false);
  assert.match(
    init.detail,
    /kindling-init has sha256 [0-9a-f]{64}, not [0-9a-f]{64} as .*kindling-init\.sha256 says/,
  );
});
