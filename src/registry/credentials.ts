// Where credentials for a registry come from, in this order (first hit wins):
//   1. KINDLING_REGISTRY_USER / KINDLING_REGISTRY_PASSWORD (any registry; for scripts and CI)
//   2. auth files, each consulted as the tool that wrote it would: a credential helper named by
//      `credHelpers[host]` or `credsStore`, then the `auths` entry (most specific key first):
//        KINDLING_AUTH_FILE if set (only it), else REGISTRY_AUTH_FILE if set (only it), else
//        ${XDG_RUNTIME_DIR}/containers/auth.json, then $DOCKER_CONFIG/config.json (~/.docker/config.json)
import path from "node:path";
import { debug } from "../util/debug.js";
import { type AuthFile, decodeAuth, findAuthEntry, helperFor, readAuthFile, serverKey } from "./authfile.js";
import { helperGet } from "./credhelper.js";
import type { RegistrySettings } from "./settings.js";

export interface Credentials {
  username: string;
  password: string;
  /** An OAuth2 refresh token (docker's `identitytoken`): exchanged at the token server. */
  identityToken?: string;
  /** Where they came from, for messages. */
  source: string;
}

export interface CredentialSearch {
  credentials?: Credentials;
  /** Every place looked at, in order (for the 401 message). */
  searched: string[];
}

export const ENV_CREDENTIALS = "KINDLING_REGISTRY_USER/KINDLING_REGISTRY_PASSWORD";

/** The auth files read, in order. */
export function authFiles(s: RegistrySettings): string[] {
  if (s.kindlingAuthFile) return [s.kindlingAuthFile];
  if (s.registryAuthFile) return [s.registryAuthFile];
  const files: string[] = [];
  if (s.xdgRuntimeDir) files.push(path.join(s.xdgRuntimeDir, "containers", "auth.json"));
  files.push(dockerConfigFile(s));
  return files;
}

/** Where `docker login` writes: $DOCKER_CONFIG/config.json, default ~/.docker/config.json. */
export function dockerConfigFile(s: RegistrySettings): string {
  return path.join(s.dockerConfig || path.join(s.home, ".docker"), "config.json");
}

/** Where podman/skopeo login writes: REGISTRY_AUTH_FILE, else ${XDG_RUNTIME_DIR}/containers/auth.json. */
export function containersAuthFile(s: RegistrySettings): string {
  if (s.registryAuthFile) return s.registryAuthFile;
  const runtime = s.xdgRuntimeDir || `/run/containers/${process.getuid?.() ?? 0}`;
  return path.join(runtime, "containers", "auth.json");
}

/** Credentials for registry (and repository: the containers tools allow per-repository keys). */
export async function searchCredentials(
  registry: string,
  repository: string,
  s: RegistrySettings,
): Promise<CredentialSearch> {
  const searched: string[] = [];
  const found = (credentials: Credentials): CredentialSearch => {
    debug(`credentials for ${registry}: using ${credentials.source}`);
    return { credentials, searched };
  };
  searched.push(ENV_CREDENTIALS);
  if (s.user) return found({ username: s.user, password: s.password ?? "", source: ENV_CREDENTIALS });
  for (const file of authFiles(s)) {
    const content = await readAuthFile(file);
    if (!content) {
      searched.push(`${file} (absent)`);
      continue;
    }
    searched.push(file);
    const creds = await fromFile(content, file, registry, repository, searched);
    if (creds) return found(creds);
  }
  debug(`credentials for ${registry}: none (searched ${searched.join(", ")})`);
  return { searched };
}

async function fromFile(
  content: AuthFile,
  file: string,
  registry: string,
  repository: string,
  searched: string[],
): Promise<Credentials | undefined> {
  const helper = helperFor(content, registry);
  if (helper) {
    const where = `docker-credential-${helper} (named in ${file})`;
    searched.push(where);
    const got = await helperGet(helper, serverKey(registry));
    if (got) {
      // docker's convention: the user "<token>" means the secret is an identity token.
      if (got.username === "<token>")
        return { username: "", password: "", identityToken: got.secret, source: where };
      return { username: got.username, password: got.secret, source: where };
    }
  }
  const hit = findAuthEntry(content, registry, repository);
  if (!hit) return undefined;
  const source = `${file} (auths["${hit.key}"])`;
  const { entry, key } = hit;
  const identityToken = entry.identitytoken || undefined;
  if (entry.auth) return { ...decodeAuth(entry.auth, key, file), identityToken, source };
  return { username: entry.username ?? "", password: entry.password ?? "", identityToken, source };
}
