import { readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { KindlingError } from "../util/errors.js";
import { DOCKER_HUB } from "./reference.js";

export interface Credentials {
  username: string;
  password: string;
  /** Where they came from, for error messages. */
  source: string;
}

/** The docker-style auth file consulted: $KINDLING_AUTH_FILE, else ~/.docker/config.json. */
export function authFilePath(env: NodeJS.ProcessEnv = process.env): string {
  return env.KINDLING_AUTH_FILE || path.join(env.HOME || os.homedir(), ".docker", "config.json");
}

/**
 * Credentials for a registry: KINDLING_REGISTRY_USER/KINDLING_REGISTRY_PASSWORD when set (explicit
 * beats stored), else the auth file's `auths` entry for the host. undefined means anonymous.
 */
export async function findCredentials(
  registry: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Credentials | undefined> {
  if (env.KINDLING_REGISTRY_USER) {
    return {
      username: env.KINDLING_REGISTRY_USER,
      password: env.KINDLING_REGISTRY_PASSWORD ?? "",
      source: "KINDLING_REGISTRY_USER/KINDLING_REGISTRY_PASSWORD",
    };
  }
  const file = authFilePath(env);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new KindlingError(`cannot read registry auth file ${file}: ${(err as Error).message}`);
  }
  let auths: Record<string, { auth?: string; username?: string; password?: string }>;
  try {
    auths = (JSON.parse(text) as { auths?: typeof auths }).auths ?? {};
  } catch {
    throw new KindlingError(`registry auth file ${file} is not valid JSON`);
  }
  const wanted = hostKeys(registry);
  for (const [key, entry] of Object.entries(auths)) {
    if (!wanted.has(normalizeKey(key)) || !entry) continue;
    if (entry.auth) {
      const decoded = Buffer.from(entry.auth, "base64").toString("utf8");
      const sep = decoded.indexOf(":");
      if (sep < 0) throw new KindlingError(`auth for ${key} in ${file} is not base64 of "user:password"`);
      return { username: decoded.slice(0, sep), password: decoded.slice(sep + 1), source: file };
    }
    if (entry.username !== undefined) {
      return { username: entry.username, password: entry.password ?? "", source: file };
    }
  }
  return undefined;
}

/** Keys of `auths` may be "host", "https://host", "http://host/v1/": compare hosts only. */
function normalizeKey(key: string): string {
  return key
    .replace(/^[a-z]+:\/\//i, "")
    .replace(/\/.*$/, "")
    .toLowerCase();
}

function hostKeys(registry: string): Set<string> {
  const host = registry.toLowerCase();
  if (host === DOCKER_HUB) return new Set([DOCKER_HUB, "index.docker.io", "registry-1.docker.io"]);
  return new Set([host]);
}
