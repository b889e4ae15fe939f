import type { RunConfig } from "../image/types.js";
import { KindlingError } from "../util/errors.js";
import type { ProcessSpec, RunOptions } from "./types.js";
import { parseImageUser, resolveUser, type UserDb } from "./users.js";

export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/**
 * The command line, Docker's rules: `--entrypoint` replaces ENTRYPOINT and drops CMD; arguments
 * after `--` replace CMD; the process is ENTRYPOINT followed by CMD.
 */
export function resolveArgs(config: RunConfig, opts: Pick<RunOptions, "entrypoint" | "command">): string[] {
  const entrypoint = opts.entrypoint ?? config.entrypoint ?? [];
  const cmd = opts.command.length > 0 ? opts.command : opts.entrypoint ? [] : (config.cmd ?? []);
  const args = [...entrypoint, ...cmd];
  if (args.length === 0) {
    throw new KindlingError("no command: the image has no ENTRYPOINT or CMD; give one after --");
  }
  return args;
}

/** Merges K=V lists: later keys replace earlier ones in place, new keys are appended. */
export function mergeEnv(...lists: string[][]): string[] {
  const out = new Map<string, string>();
  for (const list of lists) {
    for (const kv of list) {
      const eq = kv.indexOf("=");
      out.set(eq < 0 ? kv : kv.slice(0, eq), kv);
    }
  }
  return [...out.values()];
}

/** The process spec for a container: image config merged with the flags (flags win); every field set. */
export function buildProcessSpec(
  config: RunConfig,
  opts: RunOptions,
  users: UserDb,
  hostname: string,
): Required<ProcessSpec> {
  const args = resolveArgs(config, opts);
  const user = resolveUser(opts.user ?? parseImageUser(config.user), users);
  const cwd = opts.workdir ?? (config.workingDir || "/");
  if (!cwd.startsWith("/")) throw new KindlingError(`the image's WorkingDir "${cwd}" is not absolute`);
  // Defaults first so the image and then -e override them (Docker sets PATH, HOSTNAME and HOME too).
  const env = mergeEnv([`PATH=${DEFAULT_PATH}`, `HOSTNAME=${hostname}`], config.env ?? [], opts.env);
  if (!env.some((e) => e.startsWith("HOME="))) env.push(`HOME=${user.home}`);
  return {
    args,
    env,
    cwd,
    uid: user.uid,
    gid: user.gid,
    additionalGids: user.additionalGids,
  };
}
