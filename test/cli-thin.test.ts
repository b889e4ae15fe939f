/**
 * The thin entry (src/cli/thin.ts) and commander (src/cli/run.ts) parse `kindling run`'s flags from
 * one table (src/cli/run-flags.ts). Each flag, in each spelling, is parsed by both and the results
 * compared, so the two cannot drift: a flag commander knows and the thin path does not (or maps to
 * another field, or reads a value where the other does not) fails here.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Command } from "commander";
import { registerRunCommand } from "../src/cli/run.js";
import { flagSpellings, RUN_FLAGS } from "../src/cli/run-flags.js";
import { parseRun } from "../src/cli/thin.js";

/** Commander's parse of `run ARGS` (options and operands), without running the action. */
function commanderParse(args: string[]): { opts: Record<string, unknown>; operands: string[] } {
  const program = new Command("kindling").exitOverride();
  registerRunCommand(program);
  const run = program.commands.find((c) => c.name() === "run")!;
  run.exitOverride();
  const { operands, unknown } = run.parseOptions(args);
  assert.deepEqual(unknown, [], `commander does not know ${unknown.join(" ")}`);
  return { opts: run.opts(), operands };
}

/** Commander's defaults (what it sets when a flag is not given). */
const DEFAULTS = commanderParse(["img"]).opts;

test("every option commander defines for run is in the thin entry's table", () => {
  const program = new Command("kindling");
  registerRunCommand(program);
  const run = program.commands.find((c) => c.name() === "run")!;
  const spellings = flagSpellings(RUN_FLAGS);
  for (const o of run.options) {
    for (const name of [o.short, o.long].filter((n): n is string => n !== undefined)) {
      const s = spellings.get(name);
      assert.ok(s, `${name}: commander knows it, the thin entry does not`);
      assert.equal(s.field, o.attributeName(), `${name}: another field`);
      assert.equal(s.takesValue, o.required || o.optional, `${name}: value or switch differs`);
    }
  }
  assert.equal(
    spellings.size,
    run.options.reduce((n, o) => n + (o.short ? 2 : 1), 0),
  );
});

test("each flag, in each spelling, parses the same through the thin entry and commander", () => {
  for (const [name, s] of flagSpellings(RUN_FLAGS)) {
    const forms: string[][] = s.takesValue
      ? [
          [name, "v1"],
          ...(name.startsWith("--") ? [[`${name}=v1`]] : []),
          ...(s.repeat ? [[name, "v1", name, "v2"]] : []),
        ]
      : [[name]];
    for (const form of forms) {
      const args = [...form, "img", "--", "sh", "-c", "echo -n hi"];
      const thin = parseRun(args);
      assert.ok(thin, `the thin entry passes ${form.join(" ")} on to commander`);
      const full = commanderParse(args);
      assert.deepEqual([thin.image, ...thin.command], full.operands, form.join(" "));
      // what the thin path sets equals commander's; what it leaves unset is commander's default
      const merged = { ...DEFAULTS, ...thin.flags };
      assert.deepEqual(merged, full.opts, form.join(" "));
    }
  }
});

test("the thin entry hands unusual forms to commander", () => {
  for (const args of [
    ["--help"],
    ["-it", "img"], // combined short flags
    ["--rm=1", "img"],
    ["--bogus", "img"],
    ["--name"], // a value missing
    ["img", "-x"], // a flag after the image without --
    [],
  ]) {
    assert.equal(parseRun(args), undefined, args.join(" "));
  }
});
