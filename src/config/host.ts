/**
 * The parts of the environment that are the host's, not Kindling's settings: where to look for
 * executables, and the variables `-e K` copies or a child inherits. Read here so that no other
 * module touches process.env; read at each call, since PATH is the user's to change between runs.
 */

/** The environment of this process, unchanged (pass it on; do not look settings up in it). */
export function hostEnv(): Readonly<Record<string, string | undefined>> {
  return process.env;
}

/** The directories of $PATH, in order (empty entries dropped); `fallback` when PATH is unset. */
export function searchPath(fallback = ""): string[] {
  return (process.env.PATH ?? fallback).split(":").filter(Boolean);
}
