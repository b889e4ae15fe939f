// Where a reference is pulled from: its registry's mirrors (in the order registries.conf lists
// them), then the registry itself, each with its own plain-HTTP setting.
import { debug } from "../util/debug.js";
import { KindlingError } from "../util/errors.js";
import { DOCKER_HUB } from "./reference.js";
import type { RegistriesConf, RegistryEntry } from "./registries-conf.js";

export interface Endpoint {
  /** host[:port] to talk to. */
  registry: string;
  /** The repository there (a location with a namespace rewrites it). */
  repository: string;
  /** Plain HTTP. */
  insecure: boolean;
  /** A mirror rather than the registry itself. */
  mirror: boolean;
}

/** The [[registry]] entry whose prefix matches "registry/repository" longest, if any. */
export function matchRegistry(
  conf: RegistriesConf,
  registry: string,
  repository: string,
): RegistryEntry | undefined {
  const name = `${registry}/${repository}`;
  let best: RegistryEntry | undefined;
  let bestLen = -1;
  for (const r of conf.registries) {
    const len = matchLength(r.prefix, registry, name);
    if (len > bestLen) {
      best = r;
      bestLen = len;
    }
  }
  return best;
}

function matchLength(prefix: string, registry: string, name: string): number {
  if (prefix.startsWith("*.")) return registry.endsWith(prefix.slice(1)) ? prefix.length : -1;
  const p = prefix === "index.docker.io" || prefix === "registry-1.docker.io" ? DOCKER_HUB : prefix;
  return name === p || name.startsWith(`${p}/`) ? p.length : -1;
}

/**
 * The endpoints to try in order for registry/repository. `insecure` (the --insecure flag) makes
 * every endpoint plain HTTP; registries.conf does so per registry and per mirror. `byDigest` says
 * whether the pull names a digest (mirrors may be limited to digest or tag pulls).
 */
export function resolveEndpoints(
  conf: RegistriesConf,
  registry: string,
  repository: string,
  opts: { insecure: boolean; byDigest: boolean },
): Endpoint[] {
  const entry = matchRegistry(conf, registry, repository);
  if (!entry) return [{ registry, repository, insecure: opts.insecure, mirror: false }];
  if (entry.blocked)
    throw new KindlingError(
      `${registry}/${repository} is blocked by ${conf.file} (prefix "${entry.prefix}")`,
    );
  const name = `${registry}/${repository}`;
  const prefixLen = entry.prefix.startsWith("*.") ? 0 : matchedPrefix(entry.prefix, name).length;
  const rewrite = (location: string) => split(location + name.slice(prefixLen));
  const mirrors = entry.mirrors
    .filter((m) => {
      const only =
        m.pullFromMirror !== "all" ? m.pullFromMirror : entry.mirrorByDigestOnly ? "digest-only" : "all";
      return only === "all" || (only === "digest-only") === opts.byDigest;
    })
    .map((m) => ({ ...rewrite(m.location), insecure: opts.insecure || m.insecure, mirror: true }));
  const self =
    entry.location && !entry.prefix.startsWith("*.") ? rewrite(entry.location) : { registry, repository };
  const endpoints = [...mirrors, { ...self, insecure: opts.insecure || entry.insecure, mirror: false }];
  debug(
    `${name}: ${conf.file} [[registry]] prefix "${entry.prefix}": try ${endpoints
      .map((e) => `${e.insecure ? "http" : "https"}://${e.registry}/${e.repository}`)
      .join(", then ")}`,
  );
  return endpoints;
}

/** The prefix as it appears in the name (Docker Hub aliases normalized). */
function matchedPrefix(prefix: string, name: string): string {
  const p = prefix === "index.docker.io" || prefix === "registry-1.docker.io" ? DOCKER_HUB : prefix;
  return name.startsWith(p) ? p : prefix;
}

function split(location: string): { registry: string; repository: string } {
  const slash = location.indexOf("/");
  if (slash < 0) throw new KindlingError(`registries.conf location "${location}" leaves no repository`);
  return { registry: location.slice(0, slash), repository: location.slice(slash + 1) };
}
