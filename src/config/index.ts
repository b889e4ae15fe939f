/**
 * Kindling's configuration: resolved once from flags, the environment and defaults (in that order
 * of precedence) into one typed object, then passed down. Only this folder and src/cli read
 * process.env (biome's noProcessEnv keeps it so).
 *
 *   CLI:        main.ts pins configure(process.env, flags) before any command runs (a bad value
 *               exits 125); a command with a flag of its own (run --runtime) calls configure again.
 *   Library:    config() is the pinned configuration, else one resolved from process.env when asked.
 *   Daemons:    the lazy daemon pins its parent's Config (DaemonConfig.settings) and reads no environment.
 */
import { KindlingError } from "../util/errors.js";
import { type Config, SETTINGS, type Setting, type SettingName } from "./settings.js";
import { isInvalid } from "./types.js";

export { hostEnv, searchPath } from "./host.js";
export {
  type Config,
  DEFAULT_BLOCK_COMPRESSION,
  RUNTIME_CHOICES,
  type RuntimeChoice,
  SETTINGS,
  type SettingName,
} from "./settings.js";

/** A setting with a value it cannot take; the message names the variable (or flag) and the value. */
export class ConfigError extends KindlingError {
  constructor(message: string) {
    super(message, "ECONFIG");
    this.name = "ConfigError";
  }
}

/** Raw flag values by setting name (what commander hands over); undefined means not given. */
export type ConfigFlags = Partial<Record<SettingName, string | undefined>>;

/** Where each value came from, for `kindling config`-style reports and errors. */
export type ConfigSource = "flag" | "env" | "default";

const entries = () => Object.entries(SETTINGS) as [SettingName, Setting<unknown>][];

/**
 * Resolves every setting: flag > environment variable > default. An empty variable counts as
 * unset. Throws a ConfigError naming the first bad value.
 */
export function loadConfig(
  env: Readonly<Record<string, string | undefined>>,
  flags: ConfigFlags = {},
): Config {
  return resolve(env, flags).config;
}

/** loadConfig, plus where each value came from. */
export function resolve(
  env: Readonly<Record<string, string | undefined>>,
  flags: ConfigFlags = {},
): { config: Config; sources: Record<SettingName, ConfigSource> } {
  const out: Record<string, unknown> = {};
  const sources = {} as Record<SettingName, ConfigSource>;
  for (const [name, s] of entries()) {
    const flag = flags[name];
    const fromEnv = env[s.env];
    if (flag !== undefined) {
      out[name] = parseOne(s, flag, s.flag ?? `--${name}`);
      sources[name] = "flag";
    } else if (fromEnv !== undefined && fromEnv !== "") {
      out[name] = parseOne(s, fromEnv, s.env);
      sources[name] = "env";
    } else {
      out[name] = typeof s.default === "function" ? s.default(out) : s.default;
      sources[name] = "default";
    }
  }
  return { config: Object.freeze(out) as Config, sources };
}

/** Same wording as the flag errors of src/runtime/options.ts: `NAME: invalid value "x" (expected ...)`. */
function parseOne(s: Setting<unknown>, raw: string, where: string): unknown {
  const v = s.type.parse(raw);
  if (isInvalid(v)) {
    throw new ConfigError(
      `${where}: ${s.type.bad ?? "invalid"} value ${JSON.stringify(raw)} (expected ${v.expected})`,
    );
  }
  return v;
}

let pinned: Config | undefined;
/** The flags behind the pinned configuration (configure() adds a subcommand's to the program's). */
let pinnedFlags: ConfigFlags = {};

/**
 * The CLI's entry: resolves from `env` and the flags given so far, pins the result and returns it.
 * Called by main.ts with the program's flags, then by a command with its own (e.g. run's --runtime):
 * each call keeps the flags of the calls before it.
 */
export function configure(
  env: Readonly<Record<string, string | undefined>>,
  flags: ConfigFlags = {},
): Config {
  const given = Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined));
  const merged = { ...pinnedFlags, ...given };
  const c = loadConfig(env, merged);
  pinnedFlags = merged;
  pinned = c;
  return c;
}

/**
 * The process's configuration: the one the CLI pinned with useConfig(), else resolved from the
 * environment now (tests and benchmarks that import modules directly; they may pin their own).
 */
export function config(): Config {
  return pinned ?? loadConfig(process.env);
}

/** Pins the configuration config() returns (undefined: back to resolving from the environment). */
export function useConfig(c: Config | undefined): Config | undefined {
  pinned = c;
  pinnedFlags = {};
  return c;
}

/** Runs fn with `overrides` on top of the current configuration, then restores it (tests). */
export async function withConfig<T>(overrides: Partial<Config>, fn: () => Promise<T> | T): Promise<T> {
  const before = pinned;
  pinned = Object.freeze({ ...config(), ...overrides });
  try {
    return await fn();
  } finally {
    pinned = before;
  }
}

/** One setting as `kindling config` shows it: its value (secrets hidden) and where it came from. */
export interface SettingReport {
  name: SettingName;
  env: string;
  flag?: string;
  value: unknown;
  source: ConfigSource;
}

/** The settings in effect, resolved as the CLI pinned them (the environment plus the flags given). */
export function explainConfig(env: Readonly<Record<string, string | undefined>>): SettingReport[] {
  const { config: c, sources } = resolve(env, pinnedFlags);
  return entries().map(([name, s]) => ({
    name,
    env: s.env,
    ...(s.flag ? { flag: s.flag } : {}),
    value: s.secret && c[name] !== undefined ? "(set)" : c[name],
    source: sources[name],
  }));
}

/** The README's environment table, generated from SETTINGS (test/config.test.ts compares them). */
export function formatEnvTable(): string {
  const rows = entries().map(([, s]) => {
    const shown = typeof s.default === "boolean" ? (s.default ? "1" : "0") : String(s.default);
    const dflt = s.defaultText ?? (s.default === undefined ? "unset" : `\`${shown}\``);
    return `| \`${s.env}\` | ${s.describe} | ${dflt} |`;
  });
  return ["| variable | meaning | default |", "|---|---|---|", ...rows].join("\n");
}
