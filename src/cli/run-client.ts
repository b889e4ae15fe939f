/**
 * `kindling run` as a client of the service, attached or detached (-d): one code path for both.
 * The service checks the flags (as the in-process run did: same messages), records the container
 * and starts its supervisor; an attached run then streams over the supervisor's socket (frames.ts)
 * until the process ends. This module loads only the client library (node:http, the frames): it is
 * on the path of every `kindling run` (bench/cli-cost.ts measures it).
 */
import type { ContainerCreateRequest } from "../client/index.js";
import { config, SETTINGS } from "../config/index.js";
import type { RawRunFlags } from "../runtime/options.js";
import { KindlingError } from "../util/errors.js";
import { api, cliClient } from "./client.js";
import { clientTerminal } from "./terminal.js";

export type RunFlags = RawRunFlags & { detach?: boolean; name?: string; rm?: boolean };

/** The size a detached `-t` container's pty gets (no client terminal to measure), as docker's. */
const DETACHED_TTY_SIZE = { rows: 24, cols: 80 };

/** The environment the container's settings resolve from: this process's (as an in-process run's). */
function settingsEnvironment(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const s of Object.values(SETTINGS)) {
    const v = process.env[s.env];
    if (v !== undefined) out[s.env] = v;
  }
  if (config().debug) out.KINDLING_DEBUG = "1"; // --debug
  return out;
}

/** The flags as the API's create request (`-e K` takes K from our environment here). */
export function createRequest(image: string, command: string[], flags: RunFlags): ContainerCreateRequest {
  const env = (flags.env ?? []).flatMap((e) => {
    if (e.includes("=")) return [e];
    const v = process.env[e];
    return v === undefined ? [] : [`${e}=${v}`];
  });
  const given = <K extends keyof RunFlags>(k: K) =>
    flags[k] === undefined ? {} : ({ [k]: flags[k] } as Pick<RunFlags, K>);
  return {
    image,
    command,
    ...given("name"),
    // flag > KINDLING_RUNTIME > auto (the service decides auto)
    // (as typed: a name that is not one is the service's 400, naming it)
    runtime: (flags.runtime ?? config().runtime) as ContainerCreateRequest["runtime"],
    ...given("rootfs"),
    env,
    volumes: flags.volume ?? [],
    ...given("workdir"),
    ...given("user"),
    // as typed: the service reads them as `kindling run` always has (same errors)
    ...given("memory"),
    ...given("cpus"),
    ...given("timeout"),
    ...given("stopTimeout"),
    ...given("hostname"),
    ...given("entrypoint"),
    ...given("disk"),
    ...(flags.mountPacking !== undefined ? { mountPacking: flags.mountPacking as "pack" | "per-mount" } : {}),
    ...given("agent"),
    ...given("network"),
    publish: flags.publish ?? [],
    dns: flags.dns ?? [],
    autoRemove: flags.rm === true,
    ...(flags.tty ? { tty: true, ttySize: DETACHED_TTY_SIZE } : {}),
    environment: settingsEnvironment(),
    cwd: process.cwd(),
  };
}

/** `run -d`: creates and starts the container through the service, prints its id. */
export async function runDetached(image: string, command: string[], flags: RunFlags): Promise<void> {
  if (flags.interactive)
    throw new KindlingError("-i cannot be combined with -d (a detached container reads no stdin)");
  const k = await cliClient();
  const created = await api(k.createContainer(createRequest(image, command, flags)));
  process.stdout.write(`${created.id}\n`);
}

const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

/**
 * `run` without -d: the container runs under the service, its output streams here, and we exit
 * with its status. Ctrl-C (INT, TERM, HUP) stops it (TERM, grace, KILL; a second one: KILL); if we
 * die, the supervisor sees the connection close and stops it. Resolves with the exit status.
 */
export async function runAttached(image: string, command: string[], flags: RunFlags): Promise<number> {
  let session: Awaited<ReturnType<Awaited<ReturnType<typeof cliClient>>["run"]>> | undefined;
  const early: (typeof SIGNALS)[number][] = [];
  const onSignal = (s: NodeJS.Signals) => {
    const sig = s as (typeof SIGNALS)[number];
    if (session) session.signal(sig);
    else early.push(sig); // before it runs: it will not start
  };
  for (const s of SIGNALS) process.on(s, onSignal);
  process.stdout.on("error", () => {}); // a closed pipe must not end the run's cleanup
  process.stderr.on("error", () => {});
  // -t: our terminal's size goes with the request and on every resize; -it on a terminal: raw mode
  const term = flags.tty ? clientTerminal({ raw: flags.interactive === true }) : undefined;
  const eol = term?.raw ? "\r\n" : "\n";
  try {
    const k = await cliClient();
    session = await api(
      k.run(
        {
          ...createRequest(image, command, flags),
          interactive: flags.interactive === true,
          ...(term ? { ttySize: term.size() } : {}),
        },
        {
          stdin: flags.interactive ? process.stdin : undefined,
          stdout: process.stdout,
          stderr: process.stderr,
          onNotice: (text) => process.stderr.write(`kindling: ${text}${eol}`),
        },
      ),
    );
    const attached = session;
    term?.onResize((size) => attached.resize(size));
    for (const s of early) session.signal(s);
    const exit = await api(session.exit);
    term?.restore();
    if (exit.message) process.stderr.write(`kindling: ${exit.message}\n`);
    if (exit.stoppedBy) {
      const why = exit.stoppedBy === "timeout" ? `--timeout ${exit.timeoutSeconds}s` : exit.stoppedBy;
      const sig = exit.signal ? ` (${exit.signal})` : "";
      process.stderr.write(`kindling: container ${exit.id} stopped by ${why}: status ${exit.status}${sig}\n`);
    }
    return exit.status;
  } finally {
    term?.restore();
    for (const s of SIGNALS) process.off(s, onSignal);
    if (flags.interactive) process.stdin.destroy();
  }
}
