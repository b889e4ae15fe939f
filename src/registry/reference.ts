import { KindlingError } from "../util/errors.js";

/** A parsed image reference: registry/repository[:tag][@digest]. */
export interface ImageReference {
  /** Host[:port] as the user names it ("docker.io", "127.0.0.1:5000"). */
  registry: string;
  /** Path inside the registry ("library/busybox"). */
  repository: string;
  tag?: string;
  digest?: string;
}

export const DOCKER_HUB = "docker.io";

// Grammar from distribution/reference (lowercase path components, tags of <=128 word chars).
const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

/**
 * Parses a reference with docker's defaulting rules: no registry means docker.io, a one-part
 * Docker Hub name gets "library/", and no tag nor digest means ":latest".
 */
export function parseReference(input: string): ImageReference {
  let rest = input.trim().replace(/^docker:\/\//, "");
  const bad = (why: string) => new KindlingError(`invalid image reference "${input}": ${why}`);
  if (rest === "") throw bad("empty");

  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad(`digest must be sha256:<64 lowercase hex>, got "${digest}"`);
  }

  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(`tag "${tag}" is not valid`);
  }

  let registry = DOCKER_HUB;
  const slash = rest.indexOf("/");
  const first = slash >= 0 ? rest.slice(0, slash) : "";
  // Like docker: the first part is a host only if it looks like one.
  if (slash >= 0 && (first.includes(".") || first.includes(":") || first === "localhost")) {
    registry = first;
    rest = rest.slice(slash + 1);
  }
  if (registry === "index.docker.io" || registry === "registry-1.docker.io") registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && !rest.includes("/")) rest = `library/${rest}`;
  for (const part of rest.split("/")) {
    if (!COMPONENT.test(part)) throw bad(`repository path component "${part}" is not valid (lowercase only)`);
  }
  if (rest.length > 255) throw bad("repository name longer than 255 characters");
  if (tag === undefined && digest === undefined) tag = "latest";
  return { registry, repository: rest, tag, digest };
}

/** The canonical string form: "registry/repository[:tag][@digest]". */
export function formatReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ""}${ref.digest ? `@${ref.digest}` : ""}`;
}

/** parseReference then formatReference: the name a pulled image is known by. */
export function normalizeReference(input: string): string {
  return formatReference(parseReference(input));
}

/** What the manifest endpoint is asked for: the digest when pinned, else the tag. */
export function manifestReference(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? "latest";
}

/** The host the API lives on (Docker Hub's API is not at docker.io). */
export function apiHost(registry: string): string {
  return registry === DOCKER_HUB ? "registry-1.docker.io" : registry;
}
