/**
 * The Kindling service in tests: start `kindling daemon` for a home, stop it (or kill it with
 * SIGKILL), stop every container it left, and check API responses against api/openapi.yaml.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Ajv2020 } from "ajv/dist/2020.js";
import { load } from "js-yaml";
import { Kindling } from "../../src/client/index.js";
import { KINDLING, runCli } from "./cli.js";
import { REPO } from "./fixtures.js";
import { serviceOfTest, spareGone, stopHomeService } from "./home-service.js";
import { pidsNaming } from "./leftovers.js";

export interface TestService {
  child: ChildProcess;
  pid: number;
  client: Kindling;
  /** Everything it printed (its JSON-lines log). */
  output(): string;
  /** SIGTERM and wait (bounded) for it to exit. */
  stop(): Promise<void>;
  /** SIGKILL: its containers keep running under their supervisors. */
  kill9(): Promise<void>;
}

/** Starts `kindling daemon` for `home` and waits (bounded) until it answers. */
export async function startService(
  home: string,
  extraArgs: string[] = [],
  env: Record<string, string> = {},
): Promise<TestService> {
  const child = spawn(process.execPath, [KINDLING, "daemon", ...extraArgs], {
    env: { ...process.env, KINDLING_HOME: home, KINDLING_SOCKET: "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d) => {
    out += d;
  });
  child.stderr!.on("data", (d) => {
    out += d;
  });
  serviceOfTest(child.pid!);
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  const client = new Kindling({ home, socket: path.join(home, "kindling.sock") });
  const deadline = Date.now() + 30_000;
  while (!(await client.ping())) {
    if (child.exitCode !== null) throw new Error(`the service exited (${child.exitCode}): ${out}`);
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`the service did not answer within 30 s: ${out}`);
    }
    await sleep(50);
  }
  const waitExit = async (what: string) => {
    const ok = await Promise.race([exited.then(() => true), sleep(15_000).then(() => false)]);
    if (!ok) {
      child.kill("SIGKILL");
      throw new Error(`the service did not exit within 15 s after ${what}`);
    }
  };
  return {
    child,
    pid: child.pid!,
    client,
    output: () => out,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      await waitExit("SIGTERM");
    },
    kill9: async () => {
      child.kill("SIGKILL");
      await waitExit("SIGKILL");
    },
  };
}

/**
 * Stops what the service machinery left under `home`: the service (pid file), then each container's
 * supervisor (SIGTERM: it stops its container and releases everything), bounded; SIGKILL after that.
 */
export async function stopServiceAndContainers(home: string): Promise<void> {
  await stopHomeService(home, true);
  await spareGone(home);
  const containers = path.join(home, "containers");
  const shims = await pidsNaming(`${containers}/`);
  for (const p of shims) {
    try {
      process.kill(p, "SIGTERM");
    } catch {
      // gone
    }
  }
  const deadline = Date.now() + 20_000;
  while ((await pidsNaming(`${containers}/`)).length > 0 && Date.now() < deadline) await sleep(100);
  for (const p of await pidsNaming(`${containers}/`)) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      // gone
    }
  }
  await rm(containers, { recursive: true, force: true });
}

// --- the OpenAPI document

interface OpenApiDoc {
  paths: Record<string, Record<string, { responses?: Record<string, unknown> }>>;
}

let cached: { doc: OpenApiDoc; ajv: Ajv2020 } | undefined;

export async function openApi(): Promise<{ doc: OpenApiDoc; ajv: Ajv2020 }> {
  if (cached) return cached;
  const doc = load(await readFile(path.join(REPO, "api", "openapi.yaml"), "utf8")) as OpenApiDoc;
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  ajv.addFormat("date-time", (s: string) => !Number.isNaN(Date.parse(s)));
  ajv.addSchema(doc as object, "openapi");
  cached = { doc, ajv };
  return cached;
}

const ptr = (s: string) => s.replace(/~/g, "~0").replace(/\//g, "~1");

/** The document's path template that matches a concrete path (e.g. /v1/containers/abc/logs). */
function templateOf(doc: OpenApiDoc, p: string): string {
  const found = Object.keys(doc.paths).find((t) =>
    new RegExp(`^${t.replace(/\{[^}]+\}/g, "[^/]+")}$`).test(p.split("?")[0]!),
  );
  if (!found) throw new Error(`the OpenAPI document has no path for ${p}`);
  return found;
}

/**
 * Asserts that a response (status, content type, parsed body) is one the document describes for
 * METHOD PATH: the status is listed, and the body validates against its schema.
 */
export async function assertMatchesApi(
  method: string,
  urlPath: string,
  status: number,
  contentType: string,
  body: unknown,
): Promise<void> {
  const { doc, ajv } = await openApi();
  const t = templateOf(doc, urlPath);
  const op = doc.paths[t]![method.toLowerCase()];
  assert.ok(op, `the document has no ${method} ${t}`);
  const resp = op.responses?.[String(status)] as
    | { $ref?: string; content?: Record<string, unknown> }
    | undefined;
  assert.ok(resp, `${method} ${t}: status ${status} is not documented (body ${JSON.stringify(body)})`);
  const type = contentType.split(";")[0]!.trim();
  let schemaPath: string;
  if (resp.$ref) {
    schemaPath = `openapi${resp.$ref}/content/${ptr(type)}/schema`;
  } else {
    assert.ok(resp.content?.[type], `${method} ${t} ${status}: content type ${type} is not documented`);
    schemaPath = `openapi#/paths/${ptr(t)}/${method.toLowerCase()}/responses/${status}/content/${ptr(type)}/schema`;
  }
  const validate = ajv.getSchema(schemaPath);
  assert.ok(validate, `no schema at ${schemaPath}`);
  const items = type === "application/x-ndjson" ? (body as unknown[]) : [body];
  for (const item of items) {
    assert.ok(
      validate(item),
      `${method} ${urlPath} ${status}: ${ajv.errorsText(validate.errors)} in ${JSON.stringify(item).slice(0, 500)}`,
    );
  }
}

/** A request to the service whose answer is checked against the document; returns status and body. */
export async function apiCall(
  socket: string,
  method: string,
  urlPath: string,
  body?: unknown,
  // biome-ignore lint/suspicious/noExplicitAny: tests read fields of bodies the document has just validated
): Promise<{ status: number; body: any }> {
  const { rawRequest, readBody } = await import("../../src/service/unixhttp.js");
  const res = await rawRequest(socket, method, urlPath, { body, timeoutMs: 120_000 });
  const text = (await readBody(res)).toString();
  const type = String(res.headers["content-type"] ?? "");
  let parsed: unknown = text;
  if (type.startsWith("application/json")) parsed = JSON.parse(text);
  else if (type.startsWith("application/x-ndjson"))
    parsed = text
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  await assertMatchesApi(method, urlPath, res.statusCode ?? 0, type, parsed);
  return { status: res.statusCode ?? 0, body: parsed };
}

/** `kindling ARGS` with this home; never throws on a non-zero status. */
export async function cli(home: string, args: string[], input?: string) {
  return runCli(args, { home, env: { KINDLING_SOCKET: "" }, input });
}
