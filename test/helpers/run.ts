/**
 * One in-process `kindling run` with stdout and stderr piped, as most runtime and VM tests drive it:
 * options parsed as the CLI parses them, the image resolved in the home, the runtime the options name
 * unless a test passes its own (a wrapped or shaped runtime).
 */
import { resolveImage } from "../../src/runtime/image.js";
import {
  type RunHandle,
  type RunRequest,
  type RunResult,
  runContainer,
} from "../../src/runtime/lifecycle.js";
import { parseRunOptions, type RawRunFlags } from "../../src/runtime/options.js";
import { runtimeFor } from "../../src/runtime/runtimes.js";
import type { Runtime } from "../../src/runtime/types.js";
import type { KindlingHome } from "../../src/util/home.js";
import { readAll } from "./streams.js";

export interface PipedRunRequest {
  home: KindlingHome;
  image: string;
  command: string[];
  flags?: RawRunFlags;
  /** Default: the runtime the flags name. */
  runtime?: Runtime;
  /** Default: notices go to stderr as in the CLI. */
  notify?: RunRequest["notify"];
}

export interface PipedRunResult extends RunResult {
  stdout: string;
  stderr: string;
}

/** Starts the run with stdout and stderr piped; the caller reads `started` and awaits `result`. */
export async function startPiped(req: PipedRunRequest): Promise<RunHandle> {
  const options = await parseRunOptions(req.image, req.command, req.flags ?? {});
  return runContainer({
    home: req.home,
    options,
    image: await resolveImage(req.home, req.image),
    runtime: req.runtime ?? (await runtimeFor(options)),
    stdio: { stdout: "pipe", stderr: "pipe" },
    ...(req.notify ? { notify: req.notify } : {}),
  });
}

/** Runs to the end: the exit status with everything the process wrote. */
export async function runPiped(req: PipedRunRequest): Promise<PipedRunResult> {
  const handle = await startPiped(req);
  const started = await handle.started;
  const [stdout, stderr, result] = await Promise.all([
    readAll(started.stdout),
    readAll(started.stderr),
    handle.result,
  ]);
  return { ...result, stdout, stderr };
}
