// The parts of containers-registries.conf(5) (v2 format) Kindling uses: per-registry `insecure`,
// `blocked`, `location` rewrites and `[[registry.mirror]]` lists. Other keys are ignored.
import { readFile, stat } from "node:fs/promises";
import { parse, TomlError } from "smol-toml";
import { debug } from "../util/debug.js";
import { KindlingError } from "../util/errors.js";

export interface MirrorEntry {
  location: string;
  insecure: boolean;
  /** "all" (default), "digest-only" or "tag-only": which pulls may use this mirror. */
  pullFromMirror: "all" | "digest-only" | "tag-only";
}

export interface RegistryEntry {
  /** What references it applies to: "host[/namespace...]" or "*.domain". */
  prefix: string;
  /** Where those references really live (the prefix is replaced by it); "" keeps the prefix. */
  location: string;
  insecure: boolean;
  blocked: boolean;
  /** mirror-by-digest-only: mirrors serve pulls by digest only. */
  mirrorByDigestOnly: boolean;
  mirrors: MirrorEntry[];
}

export interface RegistriesConf {
  /** The file it came from ("" when there was none). */
  file: string;
  registries: RegistryEntry[];
}

const cache = new Map<string, { mtimeMs: number; conf: RegistriesConf }>();

/** Reads the file; a missing file means no mirrors and no insecure registries. */
export async function loadRegistriesConf(file: string): Promise<RegistriesConf> {
  let mtimeMs: number;
  try {
    mtimeMs = (await stat(file)).mtimeMs;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") {
      debug(`registries.conf: ${file} does not exist; no mirrors, no insecure registries`);
      return { file: "", registries: [] };
    }
    throw new KindlingError(`cannot read ${file}: ${(err as Error).message}`);
  }
  const hit = cache.get(file);
  if (hit && hit.mtimeMs === mtimeMs) return hit.conf;
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new KindlingError(`cannot read ${file}: ${(err as Error).message}`);
  }
  const conf = parseRegistriesConf(text, file);
  debug(`registries.conf: ${file}: ${conf.registries.length} [[registry]] entries`);
  cache.set(file, { mtimeMs, conf });
  return conf;
}

export function parseRegistriesConf(text: string, file: string): RegistriesConf {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (err) {
    const where = err instanceof TomlError ? ` at line ${err.line}` : "";
    const why = (err as Error).message.split("\n")[0];
    throw new KindlingError(`${file} is not valid TOML${where}: ${why}`);
  }
  if (doc.registries !== undefined) {
    throw new KindlingError(
      `${file} uses the v1 format ([registries.*]); Kindling reads the v2 format ([[registry]])`,
    );
  }
  const list = doc.registry ?? [];
  if (!Array.isArray(list))
    throw new KindlingError(`${file}: "registry" must be an array of tables ([[registry]])`);
  const registries = list.map((r, i) => registryEntry(r, `${file}: [[registry]] #${i + 1}`));
  return { file, registries };
}

function registryEntry(raw: unknown, where: string): RegistryEntry {
  const r = table(raw, where);
  const location = str(r.location, `${where} location`) ?? "";
  const prefix = str(r.prefix, `${where} prefix`) ?? location;
  if (!prefix) throw new KindlingError(`${where} needs a location or a prefix`);
  if (prefix.startsWith("*.") && location) {
    throw new KindlingError(`${where}: a wildcard prefix ("${prefix}") cannot have a location`);
  }
  const mirrorsRaw = r.mirror ?? [];
  if (!Array.isArray(mirrorsRaw))
    throw new KindlingError(`${where}: "mirror" must be [[registry.mirror]] tables`);
  const mirrors = mirrorsRaw.map((m, i): MirrorEntry => {
    const mw = `${where} mirror #${i + 1}`;
    const t = table(m, mw);
    const loc = str(t.location, `${mw} location`);
    if (!loc) throw new KindlingError(`${mw} needs a location`);
    const pull = str(t["pull-from-mirror"], `${mw} pull-from-mirror`) ?? "all";
    if (!isPullFrom(pull)) {
      throw new KindlingError(
        `${mw}: pull-from-mirror must be "all", "digest-only" or "tag-only", not "${pull}"`,
      );
    }
    return { location: stripScheme(loc), insecure: bool(t.insecure, `${mw} insecure`), pullFromMirror: pull };
  });
  return {
    prefix: stripScheme(prefix),
    location: stripScheme(location),
    insecure: bool(r.insecure, `${where} insecure`),
    blocked: bool(r.blocked, `${where} blocked`),
    mirrorByDigestOnly: bool(r["mirror-by-digest-only"], `${where} mirror-by-digest-only`),
    mirrors,
  };
}

function table(v: unknown, where: string): Record<string, unknown> {
  if (!v || typeof v !== "object" || Array.isArray(v)) throw new KindlingError(`${where} is not a table`);
  return v as Record<string, unknown>;
}

function str(v: unknown, where: string): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "string") throw new KindlingError(`${where} must be a string`);
  return v;
}

function bool(v: unknown, where: string): boolean {
  if (v === undefined) return false;
  if (typeof v !== "boolean") throw new KindlingError(`${where} must be true or false`);
  return v;
}

/** containers tools accept "https://host"; references never carry a scheme. */
function stripScheme(s: string): string {
  return s.replace(/^[a-z]+:\/\//i, "").replace(/\/+$/, "");
}

function isPullFrom(s: string): s is MirrorEntry["pullFromMirror"] {
  return s === "all" || s === "digest-only" || s === "tag-only";
}
