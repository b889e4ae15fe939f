/**
 * A spare supervisor's rehearsal (spare.ts): while it waits for a container, it runs once the code
 * a container's start runs first (a spawn, mountinfo, the OCI spec and its JSON, atomic writes, an
 * HTTP server and a request to it, the image's users), so V8 has compiled it and its inline caches
 * are warm when the container comes (the first run of that code in a process costs more CPU than the
 * next; bench/cli-cost.ts measures `kindling run` with it). It makes no file (its server
 * listens on an abstract socket), so a spare killed meanwhile leaves nothing. `stop()` ends it
 * between steps.
 */
import { createServer } from "node:http";
import { loadConfig } from "../config/index.js";
import { readMountinfo } from "../host/mounts.js";
import { hostNofileLimit } from "../host/proc.js";
import { processStartTime } from "../host/process.js";
import { BARE_CONFIG } from "../runtime/image.js";
import { buildOciSpec } from "../runtime/oci.js";
import { parseRunOptions } from "../runtime/options.js";
import { buildProcessSpec } from "../runtime/process.js";
import { readUserDb } from "../runtime/users.js";
import { exec } from "../util/exec.js";
import { encodeFrame, Frame } from "./frames.js";
import { jsonRequest } from "./unixhttp.js";

export interface WarmUp {
  done: Promise<void>;
  /** Ends it at the next step (a container came). */
  stop(): void;
}

export function warmUp(): WarmUp {
  let stopped = false;
  const steps: (() => Promise<unknown> | unknown)[] = [];
  steps.push(() => exec("true", [], { allowFailure: true }));
  steps.push(() => readMountinfo());
  steps.push(() => hostNofileLimit());
  steps.push(() => processStartTime(process.pid));
  steps.push(() => loadConfig({}));
  steps.push(async () => {
    const options = await parseRunOptions("warmup", ["true"], { runtime: "runc", network: "none" }, {}, "/");
    const users = await readUserDb("/");
    const proc = buildProcessSpec(BARE_CONFIG, options, users, "warmup");
    const spec = buildOciSpec({
      process: proc,
      hostname: "warmup",
      rootfs: "rootfs",
      volumes: [],
      nofile: 1024,
    });
    JSON.parse(`${JSON.stringify(spec, null, 2)}\n`);
    JSON.parse(JSON.stringify({ status: "running", startedAt: new Date().toISOString() }));
  });
  steps.push(async () => {
    const sock = `\0kindling-warmup-${process.pid}`;
    const server = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ ok: true }));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(sock, () => resolve());
    });
    try {
      await jsonRequest(sock, "GET", "/state");
    } finally {
      server.close();
      server.closeAllConnections();
    }
    encodeFrame(Frame.STDOUT, Buffer.from("warm"));
  });
  const done = (async () => {
    try {
      for (const step of steps) {
        if (stopped) break;
        await step();
      }
    } catch {
      // a rehearsal that fails costs nothing but its warmth
    }
  })();
  return {
    done,
    stop: () => {
      stopped = true;
    },
  };
}
