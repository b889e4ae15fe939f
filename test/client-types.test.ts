/**
 * The client library's types are generated from api/openapi.yaml (openapi-typescript, checked in as
 * src/service/api-types.ts): regenerated here, they must be byte for byte what is checked in, so a
 * change to the document without `npm run gen:api-types` fails. And the README's client example
 * type-checks against the package as a user imports it (`import { Kindling } from "kindling"`).
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";
import { REPO } from "./helpers/fixtures.js";

const run = promisify(execFile);

test("src/service/api-types.ts is what openapi-typescript makes of api/openapi.yaml now", async () => {
  const cli = path.join(REPO, "node_modules", "openapi-typescript", "bin", "cli.js");
  const { stdout } = await run(process.execPath, [cli, path.join(REPO, "api", "openapi.yaml")], {
    cwd: REPO,
    timeout: 60_000,
    maxBuffer: 16 << 20,
  });
  const checkedIn = await readFile(path.join(REPO, "src", "service", "api-types.ts"), "utf8");
  assert.ok(stdout.includes("export interface components"), "the generator printed the types");
  assert.equal(checkedIn, stdout, "src/service/api-types.ts is stale: run `npm run gen:api-types`");
});

test('the README\'s client example type-checks against `import { Kindling } from "kindling"`', async () => {
  const readme = await readFile(path.join(REPO, "README.md"), "utf8");
  const example = /```ts\n(import \{ Kindling \} from "kindling";[\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(example, "the README has the client example");
  const dir = await mkdtemp(path.join(tmpdir(), "kindling-example-"));
  try {
    // a user's project: the package under node_modules/kindling (its exports give src/ as types)
    await mkdir(path.join(dir, "node_modules"));
    await symlink(REPO, path.join(dir, "node_modules", "kindling"));
    await symlink(path.join(REPO, "node_modules", "@types"), path.join(dir, "node_modules", "@types"));
    await writeFile(path.join(dir, "package.json"), '{ "type": "module" }\n');
    await writeFile(path.join(dir, "example.ts"), `${example}\nexport {};\n`);
    const tsconfig = {
      compilerOptions: {
        target: "ES2022",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        types: ["node"],
      },
      files: ["example.ts"],
    };
    await writeFile(path.join(dir, "tsconfig.json"), JSON.stringify(tsconfig));
    const tsc = path.join(REPO, "node_modules", ".bin", "tsc");
    const r = await run(tsc, ["-p", dir], { cwd: dir, timeout: 120_000 }).catch(
      (e: { stdout?: string; stderr?: string }) => ({ stdout: e.stdout ?? "", stderr: e.stderr ?? "failed" }),
    );
    assert.equal(`${r.stdout}${r.stderr}`.trim(), "", "the example compiles without errors");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
