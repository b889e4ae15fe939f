/**
 * Firecracker's official API description (Swagger 2.0, YAML) turned into ajv validators, so every
 * request body Kindling sends and every config file it writes is checked against the real schema
 * rather than against our own idea of it.
 */
import { access, readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Ajv, type ErrorObject, type ValidateFunction } from "ajv";
import { load } from "js-yaml";
import { KindlingError } from "../../src/util/errors.js";

export const SCHEMA_FILE = "firecracker-v1.16.1.yaml";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

/** Where the schema may be: $KINDLING_FIRECRACKER_SCHEMA, else <repo>/../shared/firecracker/ (CI clones put shared/ beside the repo). */
export async function schemaCandidates(): Promise<string[]> {
  const env = process.env.KINDLING_FIRECRACKER_SCHEMA;
  if (env) return [path.resolve(env)];
  const root = await findRepoRoot(path.dirname(fileURLToPath(import.meta.url)));
  const out: string[] = [];
  if (root) {
    out.push(path.join(root, "..", "shared", "firecracker", SCHEMA_FILE));
    out.push(path.join(root, "shared", "firecracker", SCHEMA_FILE));
  }
  return [...new Set(out.map((p) => path.resolve(p)))];
}

/** The nearest ancestor holding Kindling's package.json (works from src/ and from dist/src/). */
async function findRepoRoot(start: string): Promise<string | undefined> {
  for (let dir = start; ; dir = path.dirname(dir)) {
    try {
      const pkg = JSON.parse(await readFile(path.join(dir, "package.json"), "utf8")) as { name?: string };
      if (pkg.name === "kindling") return dir;
    } catch {
      // not here; keep walking up
    }
    if (path.dirname(dir) === dir) return undefined;
  }
}

export async function findSchemaFile(): Promise<string> {
  const tried = await schemaCandidates();
  for (const p of tried) {
    try {
      await access(p);
      return p;
    } catch {
      // try the next place
    }
  }
  throw new KindlingError(
    `Firecracker API schema ${SCHEMA_FILE} not found (tried ${tried.join(", ")}); set KINDLING_FIRECRACKER_SCHEMA`,
  );
}

/** One operation that takes a JSON body, e.g. PUT /drives/{drive_id} -> Drive. */
export interface Route {
  method: string;
  template: string;
  definition: string;
  bodyRequired: boolean;
  pattern: RegExp;
}

export class FirecrackerSchema {
  private readonly ajv: Ajv;
  private readonly cache = new Map<string, ValidateFunction>();

  constructor(
    readonly file: string,
    readonly version: string,
    readonly routes: Route[],
    definitions: Record<string, JsonObject>,
  ) {
    // strict: false because Swagger annotations (e.g. `example`) are not JSON Schema keywords.
    this.ajv = new Ajv({ allErrors: true, strict: false, validateFormats: false });
    this.ajv.addSchema({ $id: "firecracker", definitions });
  }

  definitionNames(): string[] {
    const root = this.ajv.getSchema("firecracker")?.schema as { definitions: object };
    return Object.keys(root.definitions);
  }

  /** Errors (empty when valid) of `value` against definitions/<name>. */
  check(definition: string, value: unknown): string[] {
    let fn = this.cache.get(definition);
    if (!fn) {
      fn = this.ajv.getSchema(`firecracker#/definitions/${definition}`);
      if (!fn) throw new Error(`the Firecracker schema has no definition ${definition}`);
      this.cache.set(definition, fn);
    }
    return fn(value) ? [] : (fn.errors ?? []).map(describeError);
  }

  /** The route a request goes to, or undefined if the API has no such body-taking operation. */
  route(method: string, urlPath: string): Route | undefined {
    const m = method.toUpperCase();
    return this.routes.find((r) => r.method === m && r.pattern.test(urlPath));
  }

  /** Errors of one request; a request the API does not define is an error too. */
  checkRequest(method: string, urlPath: string, body: unknown): string[] {
    const route = this.route(method, urlPath);
    if (!route) return [`${method.toUpperCase()} ${urlPath} is not an operation of the Firecracker API`];
    if (body === undefined) return route.bodyRequired ? ["the request has no body"] : [];
    return this.check(route.definition, body);
  }

  /** Throws a KindlingError naming the operation and the offending fields. */
  assertRequest(method: string, urlPath: string, body: unknown): void {
    const errors = this.checkRequest(method, urlPath, body);
    if (errors.length > 0) {
      const def = this.route(method, urlPath)?.definition;
      throw new KindlingError(
        `Firecracker request ${method.toUpperCase()} ${urlPath}${def ? ` (${def})` : ""} does not match ` +
          `the API schema ${path.basename(this.file)}: ${errors.join("; ")}`,
      );
    }
  }

  /** A --config-file document is a FullVmConfiguration. */
  assertConfig(config: unknown): void {
    const errors = this.check("FullVmConfiguration", config);
    if (errors.length > 0) {
      throw new KindlingError(
        `Firecracker config file does not match FullVmConfiguration in ${path.basename(this.file)}: ${errors.join("; ")}`,
      );
    }
  }
}

/** A message that names the field: "/drives/0/is_root_device: must be boolean". */
function describeError(e: ErrorObject): string {
  const where = e.instancePath || "(body)";
  switch (e.keyword) {
    case "required":
      return `${where}: missing required field '${(e.params as { missingProperty: string }).missingProperty}'`;
    case "additionalProperties":
      return `${where}: unknown field '${(e.params as { additionalProperty: string }).additionalProperty}'`;
    case "enum":
      return `${where}: ${e.message} (${(e.params as { allowedValues: unknown[] }).allowedValues.join(", ")})`;
    default:
      return `${where}: ${e.message}`;
  }
}

/**
 * Swagger 2.0 schema objects are almost JSON Schema draft-07. Differences handled here:
 * - `example` and `x-*` are not keywords: dropped.
 * - `format` carries Swagger data types (int32, int64) or, once, a regex: int32 becomes a range, others are dropped.
 * - A `$ref` with siblings (a description) is wrapped in allOf, since draft-07 ignores siblings of $ref.
 * - Objects get `additionalProperties: false` unless they say otherwise: Firecracker deserializes
 *   request bodies with serde's deny_unknown_fields, so an unknown field is a 400 there too.
 */
export function toJsonSchema(node: Json, closeObjects = true): Json {
  if (Array.isArray(node)) return node.map((n) => toJsonSchema(n, closeObjects));
  if (node === null || typeof node !== "object") return node;
  const out: JsonObject = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === "example" || key.startsWith("x-")) continue;
    if (key === "format") {
      if (value === "int32") {
        out.minimum ??= -2147483648;
        out.maximum ??= 2147483647;
      }
      continue;
    }
    // `properties` maps names to schemas; every other object-valued key is itself a schema or list of them.
    if (key === "properties" && value && typeof value === "object" && !Array.isArray(value)) {
      out.properties = Object.fromEntries(
        Object.entries(value).map(([k, v]) => [k, toJsonSchema(v, closeObjects)]),
      );
    } else {
      out[key] = toJsonSchema(value, closeObjects);
    }
  }
  if (typeof out.$ref === "string" && Object.keys(out).length > 1) {
    const { $ref, ...rest } = out;
    return { ...rest, allOf: [{ $ref: $ref.replace("#/definitions/", "firecracker#/definitions/") }] };
  }
  if (typeof out.$ref === "string")
    out.$ref = out.$ref.replace("#/definitions/", "firecracker#/definitions/");
  if (closeObjects && out.type === "object" && out.properties && out.additionalProperties === undefined) {
    out.additionalProperties = false;
  }
  return out;
}

interface SwaggerDoc {
  swagger: string;
  info: { version: string };
  paths: Record<string, Record<string, { parameters?: { in: string; required?: boolean; schema?: Json }[] }>>;
  definitions: Record<string, Json>;
}

export function parseSwagger(text: string, file: string): FirecrackerSchema {
  const doc = load(text) as SwaggerDoc;
  if (doc?.swagger !== "2.0" || !doc.definitions || !doc.paths) {
    throw new KindlingError(`${file} is not a Swagger 2.0 API description`);
  }
  const definitions: Record<string, JsonObject> = {};
  for (const [name, def] of Object.entries(doc.definitions)) {
    definitions[name] = toJsonSchema(def) as JsonObject;
  }
  const routes: Route[] = [];
  for (const [template, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const body = op.parameters?.find((p) => p.in === "body");
      const ref = (body?.schema as { $ref?: string } | undefined)?.$ref;
      if (!body || !ref) continue;
      const pattern = new RegExp(
        `^${template.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{[^}]+\}/g, "[^/]+")}$`,
      );
      routes.push({
        method: method.toUpperCase(),
        template,
        definition: ref.replace("#/definitions/", ""),
        bodyRequired: body.required === true,
        pattern,
      });
    }
  }
  return new FirecrackerSchema(file, String(doc.info?.version ?? "unknown"), routes, definitions);
}

const loaded = new Map<string, Promise<FirecrackerSchema>>();

/** Loads (once per file) the official schema; throws a KindlingError saying where it looked. */
export function loadFirecrackerSchema(file?: string): Promise<FirecrackerSchema> {
  const key = file ?? "";
  let p = loaded.get(key);
  if (!p) {
    p = (async () => {
      const f = file ?? (await findSchemaFile());
      return parseSwagger(await readFile(f, "utf8"), f);
    })();
    loaded.set(key, p);
    p.catch(() => loaded.delete(key));
  }
  return p;
}
