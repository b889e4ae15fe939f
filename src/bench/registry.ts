/**
 * A throwaway OCI registry on 127.0.0.1 (Debian's docker-registry) for cold runs: the bench pushes
 * its images there, and every cold home pulls the index only, so chunks are fetched during the run.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { hostEnv } from "../config/index.js";
import { KindlingError } from "../util/errors.js";

export interface BenchRegistry {
  /** "127.0.0.1:PORT" */
  host: string;
  stop(): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => resolve(typeof addr === "object" && addr ? addr.port : 0));
    });
  });
}

/**
 * Starts docker-registry with filesystem storage under `parent`; stop() kills it and removes its data.
 * `env`: extra environment for it (GOGC, for measuring its CPU per request).
 */
export async function startBenchRegistry(
  parent: string,
  opts: { env?: Record<string, string> } = {},
): Promise<BenchRegistry & { pid: number }> {
  const dir = await mkdtemp(path.join(parent, "registry-"));
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const config = [
    "version: 0.1",
    "log:",
    "  level: error",
    "  accesslog:",
    "    disabled: true",
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${path.join(dir, "data")}`,
    "http:",
    `  addr: ${host}`,
    `  secret: ${randomBytes(16).toString("hex")}`,
    "",
  ].join("\n");
  await mkdir(path.join(dir, "data"));
  await writeFile(path.join(dir, "config.yml"), config);
  const log: string[] = [];
  const child: ChildProcess = spawn("docker-registry", ["serve", path.join(dir, "config.yml")], {
    stdio: ["ignore", "ignore", "pipe"],
    ...(opts.env ? { env: { ...hostEnv(), ...opts.env } } : {}),
  });
  child.stderr!.on("data", (d: Buffer) => log.push(d.toString()));
  let exited = false;
  const gone = new Promise<void>((resolve) =>
    child.once("close", () => {
      exited = true;
      resolve();
    }),
  );
  child.on("error", () => {}); // ENOENT shows as an exit below
  const stop = async () => {
    if (!exited) {
      child.kill("SIGTERM");
      await Promise.race([gone, sleep(3000)]);
      if (!exited) child.kill("SIGKILL");
      await gone;
    }
    await rm(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (exited) break;
    const ok = await fetch(`http://${host}/v2/`).then(
      (r) => r.status === 200,
      () => false,
    );
    if (ok) return { host, stop, pid: child.pid ?? 0 };
    await sleep(100);
  }
  await stop();
  throw new KindlingError(
    `docker-registry did not start on ${host} (apt-get install docker-registry): ${log.join("").trim().slice(-500)}`,
  );
}
