/**
 * The thin path of the CLI: the commands that are only requests to the service (`run`, `ps`), when
 * written in their plain form, are parsed here and run without loading commander or any command
 * module; everything else (help, an unknown or unusual flag, other commands) goes to main.ts, which
 * parses the same flags with commander and reports errors as always. bench/cli-cost.ts measures it.
 */
import { configure } from "../config/index.js";
import { EXIT_KINDLING_FAILURE, userMessage } from "../util/errors.js";
import { trace, traceAt, traceTo } from "../util/trace.js";
import type { RunFlags } from "./run-client.js";
import { flagSpellings, RUN_FLAGS } from "./run-flags.js";

/** `kindling run`'s flags by spelling, from the table commander's definitions use too (run-flags.ts). */
const RUN_SPELLINGS = flagSpellings(RUN_FLAGS);

export interface ParsedRun {
  image: string;
  command: string[];
  flags: RunFlags;
}

/** `run [flags] IMAGE [-- CMD...]` (or a CMD without dashes); undefined for anything else. */
export function parseRun(args: string[]): ParsedRun | undefined {
  const flags: Record<string, unknown> = {};
  let i = 0;
  for (; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith("-")) break;
    const eq = a.startsWith("--") ? a.indexOf("=") : -1;
    const name = eq > 0 ? a.slice(0, eq) : a;
    const flag = RUN_SPELLINGS.get(name);
    if (!flag) return undefined; // --help, combined short flags, unknown: commander says
    if (!flag.takesValue) {
      if (eq > 0) return undefined; // --rm=x: commander says
      flags[flag.field] = true;
      continue;
    }
    const value = eq > 0 ? a.slice(eq + 1) : args[++i];
    if (value === undefined || (eq < 0 && value.startsWith("-"))) return undefined;
    if (flag.repeat) flags[flag.field] = [...((flags[flag.field] as string[]) ?? []), value];
    else flags[flag.field] = value;
  }
  const image = args[i];
  if (image === undefined) return undefined;
  let rest = args.slice(i + 1);
  if (rest[0] === "--") rest = rest.slice(1);
  else if (rest.some((a) => a.startsWith("-"))) return undefined;
  return { image, command: rest, flags: flags as RunFlags };
}

/** `ps [-a] [-q] [--json]`; undefined for anything else. */
export function parsePs(args: string[]): { all?: boolean; json?: boolean; quiet?: boolean } | undefined {
  const opts: { all?: boolean; json?: boolean; quiet?: boolean } = {};
  for (const a of args) {
    if (a === "-a" || a === "--all") opts.all = true;
    else if (a === "-q" || a === "--quiet") opts.quiet = true;
    else if (a === "--json") opts.json = true;
    else return undefined;
  }
  return opts;
}

/** KINDLING_TRACE: this process's start, the thin entry's parse, and its exit. */
function startTrace(file: string | undefined): void {
  if (!file) return;
  traceTo(file, "cli");
  traceAt(performance.timeOrigin, "cli: process start");
  trace("cli: thin entry parsed, config resolved");
  process.on("exit", () => trace("cli: exit"));
}

/** Runs the command if it is one of the thin path's; false if main.ts should. */
export async function runThin(argv: string[]): Promise<boolean> {
  const [command, ...args] = argv;
  let action: (() => Promise<void>) | undefined;
  if (command === "run") {
    const run = parseRun(args);
    if (run) {
      action = async () => {
        startTrace(configure(process.env, { runtime: run.flags.runtime }).trace);
        const { runAttached, runDetached } = await import("./run-client.js");
        trace("cli: client modules loaded");
        if (run.flags.detach) return runDetached(run.image, run.command, run.flags);
        process.exitCode = await runAttached(run.image, run.command, run.flags);
      };
    }
  } else if (command === "ps") {
    const opts = parsePs(args);
    if (opts) {
      action = async () => {
        startTrace(configure(process.env).trace);
        const { ps } = await import("./containers.js");
        await ps(opts);
      };
    }
  }
  if (!action) return false;
  try {
    await action();
  } catch (err) {
    // as main.ts: one line naming the problem
    process.stderr.write(`kindling: ${userMessage(err)}\n`);
    process.exit(EXIT_KINDLING_FAILURE);
  }
  return true;
}
