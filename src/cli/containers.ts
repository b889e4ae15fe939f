/** Container commands, as clients of the service: ps, logs, exec, stop, kill, rm, wait, inspect, events, info. */
import { constants as osConstants } from "node:os";
import type { Command } from "commander";
import type { ContainerSummary } from "../client/index.js";
import { KindlingError } from "../util/errors.js";
import { api, cliClient } from "./client.js";
import { clientTerminal } from "./terminal.js";

const collect = (value: string, previous: string[]) => [...previous, value];

function ago(iso: string | null): string {
  if (!iso) return "";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s} seconds`;
  if (s < 3600) return `${Math.round(s / 60)} minutes`;
  if (s < 86400) return `${Math.round(s / 3600)} hours`;
  return `${Math.round(s / 86400)} days`;
}

function statusText(c: ContainerSummary): string {
  if (c.status === "running") return `Up ${ago(c.startedAt)}`;
  if (c.status === "exited") return `Exited (${c.exitCode ?? "?"}) ${ago(c.finishedAt)} ago`;
  return c.status[0]!.toUpperCase() + c.status.slice(1);
}

function table(rows: string[][]): string {
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map(
      (r) =>
        `${r
          .map((c, i) => c.padEnd(w[i]!))
          .join("   ")
          .trimEnd()}\n`,
    )
    .join("");
}

function number(flag: string, v: string | undefined, min = 0): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) throw new KindlingError(`${flag}: ${v} is not a number >= ${min}`);
  return n;
}

/** `ps`: the service's listing as a table, ids (-q) or JSON. */
export async function ps(opts: { all?: boolean; json?: boolean; quiet?: boolean }): Promise<void> {
  const k = await cliClient();
  const list = await api(k.listContainers({ all: opts.all }));
  if (opts.json) return void process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
  if (opts.quiet) return void process.stdout.write(list.map((c) => `${c.id}\n`).join(""));
  const rows = [["CONTAINER ID", "IMAGE", "RUNTIME", "COMMAND", "CREATED", "STATUS", "NAMES"]];
  for (const c of list) {
    const cmd = c.command.join(" ");
    rows.push([
      c.id,
      c.image,
      c.runtime,
      JSON.stringify(cmd.length > 24 ? `${cmd.slice(0, 21)}...` : cmd),
      `${ago(c.created)} ago`,
      statusText(c),
      c.name,
    ]);
  }
  process.stdout.write(table(rows));
}

export function registerContainerCommands(program: Command): void {
  program
    .command("ps")
    .description("list containers (running; -a: all)")
    .option("-a, --all", "also containers that have exited", false)
    .option("--json", "JSON output", false)
    .option("-q, --quiet", "ids only", false)
    .action(ps);

  program
    .command("logs")
    .description("print a container's output (stdout to stdout, stderr to stderr)")
    .argument("<container>", "id, id prefix or name")
    .option("-f, --follow", "keep printing until the container ends", false)
    .option("-n, --tail <n>", "only the last N chunks of output")
    .action(async (ref: string, opts: { follow: boolean; tail?: string }) => {
      const k = await cliClient();
      const tail = number("--tail", opts.tail);
      try {
        for await (const e of k.logs(ref, { follow: opts.follow, tail })) {
          (e.stream === "stderr" ? process.stderr : process.stdout).write(e.data);
        }
      } catch (err) {
        await api(Promise.reject(err));
      }
    });

  program
    .command("exec")
    .description("run a command in a running container; exits with its status")
    .argument("<container>", "id, id prefix or name")
    .argument("<command...>", "command and arguments (after --)")
    .option("-i, --interactive", "pass our stdin to the process", false)
    .option("-t, --tty", "a pseudo-terminal for the process (with -i on a terminal: ours in raw mode)", false)
    .option("-e, --env <K=V>", "set an environment variable (repeatable)", collect, [])
    .option("-w, --workdir <dir>", "working directory inside the container")
    .action(
      async (
        ref: string,
        command: string[],
        opts: { interactive: boolean; tty: boolean; env: string[]; workdir?: string },
      ) => {
        const k = await cliClient();
        const env = opts.env.flatMap((e) =>
          e.includes("=") ? [e] : process.env[e] === undefined ? [] : [`${e}=${process.env[e]}`],
        );
        // -t: our terminal's size at start and on SIGWINCH; -it on a terminal: raw mode until the end
        const term = opts.tty ? clientTerminal({ raw: opts.interactive }) : undefined;
        // a signal ends us (the service then kills the process, as always); the terminal is restored first
        const onSignal = (sig: NodeJS.Signals) => {
          term?.restore();
          process.exit(128 + (osConstants.signals[sig] ?? 0));
        };
        if (term) for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(s, onSignal);
        try {
          const session = await api(
            k.execSession(
              ref,
              {
                cmd: command,
                env,
                ...(opts.workdir ? { workdir: opts.workdir } : {}),
                ...(term ? { tty: true, ttySize: term.size() } : {}),
              },
              {
                stdin: opts.interactive ? process.stdin : undefined,
                stdout: process.stdout,
                stderr: process.stderr,
              },
            ),
          );
          term?.onResize((size) => session.resize(size));
          const exit = await api(session.exit);
          term?.restore();
          if (exit.message) process.stderr.write(`kindling: ${exit.message}\n`);
          process.exitCode = exit.status;
        } finally {
          term?.restore();
        }
      },
    );

  program
    .command("stop")
    .description("stop containers: TERM, then KILL after the grace period")
    .argument("<containers...>", "ids, id prefixes or names")
    .option("-t, --time <seconds>", "seconds between TERM and KILL (default: the container's --stop-timeout)")
    .action(async (refs: string[], opts: { time?: string }) => {
      const k = await cliClient();
      const t = number("-t", opts.time);
      for (const ref of refs) {
        await api(k.stop(ref, t));
        process.stdout.write(`${ref}\n`);
      }
    });

  program
    .command("kill")
    .description("send a signal to containers (default KILL)")
    .argument("<containers...>", "ids, id prefixes or names")
    .option("-s, --signal <sig>", "signal name or number", "KILL")
    .action(async (refs: string[], opts: { signal: string }) => {
      const k = await cliClient();
      for (const ref of refs) {
        await api(k.kill(ref, opts.signal));
        process.stdout.write(`${ref}\n`);
      }
    });

  program
    .command("rm")
    .description("remove containers (their record and log); -f stops a running one first")
    .argument("<containers...>", "ids, id prefixes or names")
    .option("-f, --force", "stop (KILL) a running container and remove it", false)
    .action(async (refs: string[], opts: { force: boolean }) => {
      const k = await cliClient();
      for (const ref of refs) {
        await api(k.remove(ref, { force: opts.force }));
        process.stdout.write(`${ref}\n`);
      }
    });

  program
    .command("wait")
    .description("wait for containers to end; prints each exit status")
    .argument("<containers...>", "ids, id prefixes or names")
    .action(async (refs: string[]) => {
      const k = await cliClient();
      for (const ref of refs) {
        const exit = await api(k.wait(ref));
        process.stdout.write(`${exit.exitCode}\n`);
      }
    });

  program
    .command("inspect")
    .description("a container's record and state")
    .argument("<container>", "id, id prefix or name")
    .option("--json", "JSON output (the default and only format)", true)
    .action(async (ref: string) => {
      const k = await cliClient();
      process.stdout.write(`${JSON.stringify(await api(k.inspectContainer(ref)), null, 2)}\n`);
    });

  program
    .command("events")
    .description("print the service's events as they happen (Ctrl-C ends)")
    .option("--json", "one JSON object per line", false)
    .action(async (opts: { json: boolean }) => {
      const k = await cliClient();
      for await (const e of k.events()) {
        if (opts.json) process.stdout.write(`${JSON.stringify(e)}\n`);
        else process.stdout.write(`${e.time} ${e.type} ${e.action} ${e.id}${e.name ? ` (${e.name})` : ""}\n`);
      }
    });

  program
    .command("info")
    .description("the service: version, pid, socket, containers, runtimes this host can run")
    .option("--json", "JSON output", false)
    .action(async (opts: { json: boolean }) => {
      const k = await cliClient();
      const info = await api(k.info());
      if (opts.json) return void process.stdout.write(`${JSON.stringify(info, null, 2)}\n`);
      const lines = [
        `version: ${info.version}`,
        `daemon.pid: ${info.daemon.pid}`,
        `daemon.socket: ${info.daemon.socket}`,
        `home: ${info.daemon.home}`,
        `uptime: ${Math.round(info.daemon.uptimeSeconds)} s`,
        `containers: ${info.containers.total} (${info.containers.running} running, ${info.containers.exited} exited)`,
        `images: ${info.images}`,
        `runtimes: ${info.runtimes.map((r) => `${r.name}${r.usable ? "" : " (not usable)"}`).join(", ")}`,
      ];
      process.stdout.write(`${lines.join("\n")}\n`);
    });
}
