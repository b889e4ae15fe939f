import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { exec } from "../src/util/exec.js";
import { runCli } from "./helpers/cli.js";

// `kindling completion bash`, loaded into a real bash (in a subshell) and asked for completions.

let work: string;
let script: string;

before(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "kindling-completion-"));
  const r = await runCli(["completion", "bash"], { home: work });
  assert.equal(r.code, 0, r.stderr);
  script = path.join(work, "kindling.bash");
  await writeFile(script, r.stdout);
});

after(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/** What bash completes for the command line `words` (the last word is the one being completed). */
async function complete(words: string[]): Promise<string[]> {
  const array = words.map((w) => `'${w}'`).join(" ");
  const body = `source '${script}'; COMP_WORDS=(${array}); COMP_CWORD=${words.length - 1}; _kindling_complete; printf '%s\\n' "\${COMPREPLY[@]}"`;
  const r = await exec("bash", ["--norc", "--noprofile", "-c", body], { timeout: 10_000 });
  return r.stdout.split("\n").filter(Boolean);
}

test("the script registers a completion function for kindling", async () => {
  const r = await exec("bash", ["--norc", "-c", `source '${script}' && complete -p kindling`], {
    timeout: 10_000,
  });
  assert.equal(r.stdout.trim(), "complete -o default -F _kindling_complete kindling");
});

test("commands, subcommands, options and option values complete", async () => {
  assert.deepEqual(await complete(["kindling", "im"]), ["image"]);
  assert.deepEqual(await complete(["kindling", "--debug", "lo"]), ["logs", "login", "logout"]);
  const sub = await complete(["kindling", "image", ""]);
  for (const c of ["pull", "push", "ls", "inspect", "export", "rm"])
    assert.ok(sub.includes(c), `${c} in ${sub}`);
  assert.deepEqual(await complete(["kindling", "image", "pull", "--pl"]), ["--platform"]);
  assert.deepEqual(await complete(["kindling", "image", "pull", "--platform", "linux/arm"]), [
    "linux/arm64",
    "linux/arm/v7",
  ]);
  // After a value option's value, options again; a file-valued option leaves it to bash's default.
  assert.ok(
    (await complete(["kindling", "image", "pull", "--platform", "linux/arm64", "--"])).includes("--insecure"),
  );
  assert.deepEqual(await complete(["kindling", "login", "--authfile", ""]), []);
  assert.ok((await complete(["kindling", "login", "-"])).includes("--password-stdin"));
  assert.deepEqual(await complete(["kindling", "completion", ""]), []);
});

test("an unknown shell is one line, exit 125", async () => {
  const r = await runCli(["completion", "zsh"], { home: work });
  assert.equal(r.code, 125);
  assert.equal(r.stderr, 'kindling: completion for "zsh" is not available; supported: bash\n');
});
