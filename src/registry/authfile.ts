// Auth files of the docker CLI (config.json) and the containers tools (auth.json): one JSON shape,
// `auths` keyed by server, plus `credsStore` / `credHelpers` naming docker-credential-* helpers.
import { randomBytes } from "node:crypto";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { KindlingError } from "../util/errors.js";
import { DOCKER_HUB } from "./reference.js";

export interface AuthEntry {
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
}

export interface AuthFile {
  auths?: Record<string, AuthEntry>;
  credsStore?: string;
  credHelpers?: Record<string, string>;
  [other: string]: unknown;
}

/** The key docker uses for Docker Hub in auths and with helpers. */
export const DOCKER_HUB_SERVER = "https://index.docker.io/v1/";

/** The server name docker stores credentials under (and passes to helpers) for a registry. */
export function serverKey(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_SERVER : registry;
}

/** The file's content; undefined when it does not exist. */
export async function readAuthFile(file: string): Promise<AuthFile | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    throw new KindlingError(`cannot read registry auth file ${file}: ${(err as Error).message}`);
  }
  if (text.trim() === "") return {};
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new KindlingError(`registry auth file ${file} is not valid JSON`);
  }
  if (!body || typeof body !== "object" || Array.isArray(body)) {
    throw new KindlingError(`registry auth file ${file} is not a JSON object`);
  }
  return body as AuthFile;
}

/** Writes the file so readers see the old or the new content; private to the user (0600, dir 0700). */
export async function writeAuthFile(file: string, content: AuthFile): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(4).toString("hex")}`);
  try {
    await writeFile(tmp, `${JSON.stringify(content, null, "\t")}\n`, { mode: 0o600 });
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw new KindlingError(`cannot write registry auth file ${file}: ${(err as Error).message}`);
  }
}

/**
 * A key of `auths` as "host[/namespace...]": docker writes "https://host/v1/" or "host", the
 * containers tools also "host/namespace/repo" for credentials that hold for one repository.
 */
export function normalizeKey(key: string): string {
  let k = key.trim().toLowerCase();
  const hadScheme = /^[a-z]+:\/\//.test(k);
  k = k.replace(/^[a-z]+:\/\//, "").replace(/\/+$/, "");
  // docker's URL keys carry an API path, not a namespace.
  if (hadScheme) k = k.replace(/\/v[12]$/, "").replace(/\/.*$/, "");
  const slash = k.indexOf("/");
  const host = slash < 0 ? k : k.slice(0, slash);
  const rest = slash < 0 ? "" : k.slice(slash);
  const hub = host === "index.docker.io" || host === "registry-1.docker.io" ? DOCKER_HUB : host;
  return hub + rest;
}

/** The keys that may hold credentials for registry/repository, most specific first (containers rules). */
export function lookupKeys(registry: string, repository: string): string[] {
  const keys: string[] = [];
  const parts = repository ? repository.toLowerCase().split("/") : [];
  for (let n = parts.length; n > 0; n--)
    keys.push(`${registry.toLowerCase()}/${parts.slice(0, n).join("/")}`);
  keys.push(registry.toLowerCase());
  return keys;
}

/** The `auths` entry for the most specific matching key, with the key as written in the file. */
export function findAuthEntry(
  file: AuthFile,
  registry: string,
  repository: string,
): { key: string; entry: AuthEntry } | undefined {
  const entries = Object.entries(file.auths ?? {});
  for (const wanted of lookupKeys(registry, repository)) {
    for (const [key, entry] of entries) {
      if (entry && typeof entry === "object" && normalizeKey(key) === wanted && hasSecret(entry)) {
        return { key, entry };
      }
    }
  }
  return undefined;
}

function hasSecret(e: AuthEntry): boolean {
  return Boolean(e.auth || e.identitytoken || e.username !== undefined);
}

/** The helper the file names for a registry: credHelpers[host] first, then credsStore. */
export function helperFor(file: AuthFile, registry: string): string | undefined {
  for (const [key, helper] of Object.entries(file.credHelpers ?? {})) {
    if (normalizeKey(key) === registry.toLowerCase() && helper) return helper;
  }
  return file.credsStore || undefined;
}

/** Decodes `auth` (base64 of "user:password"). */
export function decodeAuth(auth: string, key: string, file: string): { username: string; password: string } {
  const decoded = Buffer.from(auth, "base64").toString("utf8");
  const sep = decoded.indexOf(":");
  if (sep < 0) throw new KindlingError(`auth for ${key} in ${file} is not base64 of "user:password"`);
  return { username: decoded.slice(0, sep), password: decoded.slice(sep + 1) };
}

/** Removes every key naming exactly this registry (any spelling); returns how many went. */
export function removeEntries(file: AuthFile, registry: string): number {
  let n = 0;
  for (const key of Object.keys(file.auths ?? {})) {
    if (normalizeKey(key) === registry.toLowerCase()) {
      delete file.auths![key];
      n++;
    }
  }
  return n;
}
