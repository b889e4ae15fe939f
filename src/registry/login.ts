// `kindling login` / `logout`: check the credentials against the registry (as `docker login` does),
// then keep them where docker would: the helper the docker config names for the registry
// (credHelpers / credsStore), else `auths` of $DOCKER_CONFIG/config.json; or the containers tools'
// auth file, or any file given.
import { KindlingError } from "../util/errors.js";
import {
  type AuthFile,
  helperFor,
  normalizeKey,
  readAuthFile,
  removeEntries,
  serverKey,
  writeAuthFile,
} from "./authfile.js";
import { RegistryClient } from "./client.js";
import { containersAuthFile, dockerConfigFile } from "./credentials.js";
import { helperErase, helperStore } from "./credhelper.js";
import { matchRegistry } from "./endpoints.js";
import { DOCKER_HUB } from "./reference.js";
import { loadRegistriesConf } from "./registries-conf.js";
import type { RegistrySettings } from "./settings.js";

export interface StoreChoice {
  /** Write to the containers tools' auth file instead of docker's config. */
  containers?: boolean;
  /** Write to this auth file. */
  authFile?: string;
}

/** "https://Host:5000/v1/" or "index.docker.io" -> "host:5000" / "docker.io"; "" -> Docker Hub. */
export function loginRegistry(input: string | undefined): string {
  const host = normalizeKey(input ?? DOCKER_HUB);
  if (
    !/^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$/.test(host) &&
    !/^\[[0-9a-f:]+\](:\d{1,5})?$/.test(host)
  ) {
    throw new KindlingError(
      `invalid registry "${input}": expected a host[:port] such as registry.example.com:5000`,
    );
  }
  return host;
}

/** The file login/logout use. */
export function storeFile(s: RegistrySettings, choice: StoreChoice): string {
  if (choice.authFile) return choice.authFile;
  if (choice.containers) return containersAuthFile(s);
  return dockerConfigFile(s);
}

/** GET /v2/ with the credentials: 401 means they are wrong. Plain HTTP if asked or per registries.conf. */
export async function verifyLogin(
  registry: string,
  creds: { username: string; password: string },
  s: RegistrySettings,
  insecure: boolean,
): Promise<void> {
  const entry = matchRegistry(await loadRegistriesConf(s.registriesConf), registry, "");
  const client = new RegistryClient({
    registry,
    repository: "",
    insecure: insecure || Boolean(entry?.insecure),
    credentials: { ...creds, source: "the credentials given" },
    attempts: 2,
  });
  const reply = await client.request("/v2/");
  await reply.res.body?.cancel();
  reply.done();
}

/** Stores the credentials; returns where (for the message). */
export async function storeLogin(
  registry: string,
  creds: { username: string; password: string },
  s: RegistrySettings,
  choice: StoreChoice,
): Promise<string> {
  const file = storeFile(s, choice);
  const content: AuthFile = (await readAuthFile(file)) ?? {};
  const helper = helperFor(content, registry);
  if (helper) {
    await helperStore(helper, serverKey(registry), { username: creds.username, secret: creds.password });
    return `docker-credential-${helper}`;
  }
  removeEntries(content, registry);
  content.auths ??= {};
  content.auths[serverKey(registry)] = {
    auth: Buffer.from(`${creds.username}:${creds.password}`).toString("base64"),
  };
  await writeAuthFile(file, content);
  return file;
}

/** Removes stored credentials; returns where they were removed from (empty: there were none). */
export async function logout(registry: string, s: RegistrySettings, choice: StoreChoice): Promise<string[]> {
  const file = storeFile(s, choice);
  const content = await readAuthFile(file);
  if (!content) return [];
  const removed: string[] = [];
  const helper = helperFor(content, registry);
  if (helper && (await helperErase(helper, serverKey(registry)))) removed.push(`docker-credential-${helper}`);
  if (removeEntries(content, registry) > 0) {
    await writeAuthFile(file, content);
    removed.push(file);
  }
  return removed;
}
