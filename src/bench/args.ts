/**
 * The command lines of the benchmarks under bench/: `--name value` options and `--flag` switches.
 * `--help` prints the usage and exits; an unknown option or one without its value is refused with the
 * usage, so a typo never starts a run that takes minutes.
 */
import { parseArgs } from "node:util";

export interface BenchArgs {
  /** An option's value, if given. */
  get(name: string): string | undefined;
  str(name: string, dflt: string): string;
  num(name: string, dflt: number): number;
  /** A comma-separated option as a list, if given. */
  list(name: string): string[] | undefined;
  /** Whether a switch was given. */
  has(name: string): boolean;
  /** Arguments that are not options (only when `positionals` allows them). */
  positionals: string[];
}

export interface BenchArgSpec {
  /** Names of options that take a value (`--n 3`). */
  options?: readonly string[];
  /** Names of switches (`--json`). */
  switches?: readonly string[];
  /** Whether free arguments are allowed (an image and a command, say). */
  positionals?: boolean;
}

/** Parses `argv` (default: this process's) for a benchmark whose usage line is `usage`. */
export function benchArgs(usage: string, spec: BenchArgSpec, argv = process.argv.slice(2)): BenchArgs {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(`usage: ${usage}`);
    process.exit(0);
  }
  const options: Record<string, { type: "string" | "boolean" }> = {};
  for (const name of spec.options ?? []) options[name] = { type: "string" };
  for (const name of spec.switches ?? []) options[name] = { type: "boolean" };
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: spec.positionals ?? false });
  } catch (err) {
    console.error(`error: ${(err as Error).message}\nusage: ${usage}`);
    process.exit(2);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const get = (name: string) => {
    const v = values[name];
    return typeof v === "string" ? v : undefined;
  };
  const num = (name: string, dflt: number) => {
    const v = get(name);
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isFinite(n)) {
      console.error(`error: --${name} must be a number, not ${JSON.stringify(v)}\nusage: ${usage}`);
      process.exit(2);
    }
    return n;
  };
  return {
    get,
    str: (name, dflt) => get(name) ?? dflt,
    num,
    list: (name) => get(name)?.split(",").filter(Boolean),
    has: (name) => values[name] === true,
    positionals: parsed.positionals,
  };
}
