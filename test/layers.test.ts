/**
 * The folders under src/ form a stack: no folder imports one that imports it back, directly or through
 * others (docs/architecture.md). Reads the sources (every relative import, `export ... from` and dynamic
 * import(), type-only ones included) and fails naming the cycle and the files that make it.
 */
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { test } from "node:test";
import { REPO } from "./helpers/fixtures.js";

const SRC = path.join(REPO, "src");

/**
 * Folder edges that may close a cycle for now, each with who removes it. Keep it empty: add an entry only
 * for a cycle someone is removing right now, as "from->to".
 */
const KNOWN_CYCLE_EDGES: ReadonlyMap<string, string> = new Map([]);

async function sourceFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await sourceFiles(p)));
    else if (e.name.endsWith(".ts")) out.push(p);
  }
  return out;
}

/** The top folder under src/ of a path ("vm" for src/vm/firecracker/vm.ts), or undefined for src/*.ts. */
function folderOf(file: string): string | undefined {
  const rel = path.relative(SRC, file).split(path.sep);
  return rel.length > 1 && rel[0] !== ".." ? rel[0] : undefined;
}

const IMPORT = /(?:\bfrom\s*|\bimport\s*\(?\s*)["'](\.{1,2}\/[^"']+)["']/g;

/** Folder -> folder -> the files that import across. */
async function folderGraph(): Promise<Map<string, Map<string, string[]>>> {
  const graph = new Map<string, Map<string, string[]>>();
  for (const file of await sourceFiles(SRC)) {
    const from = folderOf(file);
    if (!from) continue;
    const text = await readFile(file, "utf8");
    for (const m of text.matchAll(IMPORT)) {
      const to = folderOf(path.resolve(path.dirname(file), m[1]));
      if (!to || to === from) continue;
      const edges = graph.get(from) ?? new Map<string, string[]>();
      graph.set(from, edges);
      const files = edges.get(to) ?? [];
      edges.set(to, files);
      if (!files.includes(file)) files.push(path.relative(REPO, file));
    }
  }
  return graph;
}

/** A path from `start` to `goal` over the graph, or undefined. */
function pathBetween(
  graph: Map<string, Map<string, string[]>>,
  start: string,
  goal: string,
): string[] | undefined {
  const prev = new Map<string, string>();
  const queue = [start];
  const seen = new Set([start]);
  while (queue.length > 0) {
    const at = queue.shift()!;
    if (at === goal) {
      const out = [at];
      for (let p = prev.get(at); p !== undefined; p = prev.get(p)) out.unshift(p);
      return out;
    }
    for (const next of graph.get(at)?.keys() ?? []) {
      if (seen.has(next)) continue;
      seen.add(next);
      prev.set(next, at);
      queue.push(next);
    }
  }
  return undefined;
}

test("the folders under src/ import each other without cycles", async () => {
  const graph = await folderGraph();
  assert.ok(graph.has("runtime") && graph.has("vm"), "the scan found the folders");
  const problems: string[] = [];
  for (const [from, edges] of graph) {
    for (const [to, files] of edges) {
      if (KNOWN_CYCLE_EDGES.has(`${from}->${to}`)) continue;
      const back = pathBetween(graph, to, from);
      if (back) problems.push(`${from} -> ${back.join(" -> ")} (${from} -> ${to} in ${files.join(", ")})`);
    }
  }
  assert.deepEqual(problems, [], `folder cycles:\n${problems.join("\n")}`);
});

test("src/vm imports nothing from src/runtime (the VM layer sits below the runtimes)", async () => {
  const graph = await folderGraph();
  assert.deepEqual(graph.get("vm")?.get("runtime") ?? [], []);
});

test("no file under src/ imports the test kit or anything else outside src/ (the kit is test/helpers)", async () => {
  const outside: string[] = [];
  for (const file of await sourceFiles(SRC)) {
    const text = await readFile(file, "utf8");
    for (const m of text.matchAll(IMPORT)) {
      const target = path.resolve(path.dirname(file), m[1]);
      if (path.relative(SRC, target).startsWith("..")) outside.push(`${path.relative(REPO, file)}: ${m[1]}`);
    }
    if (/(^|\/)testing\.ts$/.test(file))
      outside.push(`${path.relative(REPO, file)}: a test helper in the product`);
  }
  assert.deepEqual(outside, [], "test helpers live in test/helpers; src/ imports only src/");
});

test("the scan sees a cycle when there is one", () => {
  const graph = new Map([
    ["a", new Map([["b", ["a.ts"]]])],
    ["b", new Map([["c", ["b.ts"]]])],
    ["c", new Map([["a", ["c.ts"]]])],
  ]);
  assert.deepEqual(pathBetween(graph, "b", "a"), ["b", "c", "a"]);
  assert.equal(pathBetween(graph, "a", "d"), undefined);
});
