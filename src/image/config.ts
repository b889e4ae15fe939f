import type { RunConfig } from "./types.js";

export const DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : [];
}

/** The run settings of an OCI/docker image config (its "config" object); defaults for a plain rootfs. */
export function runConfigFromImageConfig(configJson: unknown): RunConfig {
  const c = ((configJson as { config?: Record<string, unknown> } | null)?.config ?? {}) as Record<
    string,
    unknown
  >;
  if (configJson === null || configJson === undefined) {
    return { entrypoint: [], cmd: ["/bin/sh"], env: [DEFAULT_PATH], workingDir: "/", user: "" };
  }
  return {
    entrypoint: strings(c.Entrypoint),
    cmd: strings(c.Cmd),
    env: strings(c.Env),
    workingDir: typeof c.WorkingDir === "string" && c.WorkingDir !== "" ? c.WorkingDir : "/",
    user: typeof c.User === "string" ? c.User : "",
  };
}
