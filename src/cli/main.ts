import { setFlagsFromString } from "node:v8";
import { Command, CommanderError } from "commander";
import { configure } from "../config/index.js";
import { rawArgv } from "../util/bytestring.js";
import { debugEnabled, setDebug } from "../util/debug.js";
import { EXIT_KINDLING_FAILURE, userMessage } from "../util/errors.js";
import { closeAllScopes } from "../util/scope.js";
import { trace, traceAt, traceTo } from "../util/trace.js";

const program = new Command("kindling")
  .description("Run OCI images in microVMs and with runc/gVisor on a lazily loaded root filesystem")
  .option("--debug", "print debug lines (which credentials and mirrors were used); also KINDLING_DEBUG=1")
  .showHelpAfterError()
  .exitOverride()
  // Settings are read once, before any command runs: a bad KINDLING_* value is an error here (125).
  .hook("preAction", () => {
    const cfg = configure(process.env, { debug: program.opts().debug ? "1" : undefined });
    setDebug(cfg.debug);
    if (cfg.trace) {
      traceTo(cfg.trace, "cli");
      traceAt(performance.timeOrigin, "cli: process start");
      trace("cli: commands loaded, config resolved");
      process.on("exit", () => trace("cli: exit"));
    }
  });

type Register = (p: Command) => void;
/**
 * Each command's module, loaded only when that command runs: `kindling run` need not load the
 * registry client, the bench harness or the image pipeline (bench/cli-cost.ts measures the effect).
 * Help, completion and unknown commands load them all, in this order.
 */
const COMMANDS: [string[], () => Promise<Register>][] = [
  [["image"], async () => (await import("./image.js")).registerImageCommands],
  [["run"], async () => (await import("./run.js")).registerRunCommand],
  [
    ["ps", "logs", "exec", "stop", "kill", "rm", "wait", "inspect", "events", "info"],
    async () => (await import("./containers.js")).registerContainerCommands,
  ],
  [["daemon"], async () => (await import("./daemon.js")).registerDaemonCommand],
  [["doctor"], async () => (await import("./doctor.js")).registerDoctorCommand],
  [["config"], async () => (await import("./config.js")).registerConfigCommand],
  [["kernel"], async () => (await import("./kernel.js")).registerKernelCommands],
  [["bench"], async () => (await import("./bench.js")).registerBenchCommand],
  [["login", "logout"], async () => (await import("./login.js")).registerLoginCommands],
  [["completion"], async () => (await import("./completion.js")).registerCompletionCommand],
];
const named = process.argv.slice(2).find((a) => !a.startsWith("-"));
// fetch() parses HTTP with undici's llhttp, a WebAssembly module that V8 tiers up with TurboFan in
// its background threads; Node waits for those jobs before a process exits, which kept `image
// pull` alive 60-700 ms after its last step (the cold start's first step: bench/coldstart.ts).
// Liftoff's code is plenty for a short-lived command; the long-lived service keeps the default.
if (named !== "daemon") setFlagsFromString("--liftoff-only");
const only = COMMANDS.find(
  ([names]) => named !== undefined && names.includes(named) && named !== "completion",
);
for (const [, load] of only ? [only] : COMMANDS) (await load())(program);

// Ctrl-C / TERM for commands that do not handle signals themselves: release what we hold, then exit.
let stopping = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    if (process.listenerCount(signal) > 1 || stopping) return; // a command (run) handles it
    stopping = true;
    void closeAllScopes().finally(() => process.exit(signal === "SIGINT" ? 130 : 143));
  });
}

try {
  // Arguments as the bytes given (src/util/bytestring.ts): a non-UTF-8 byte in `-e` or a command's
  // arguments reaches the container as itself, not as U+FFFD.
  await program.parseAsync(rawArgv());
} catch (err) {
  if (err instanceof CommanderError) {
    process.exit(err.exitCode === 0 ? 0 : 2);
  }
  // One line naming the problem, never a stack unless --debug asked for it (issue 15).
  process.stderr.write(`kindling: ${userMessage(err, debugEnabled())}\n`);
  await closeAllScopes();
  process.exit(EXIT_KINDLING_FAILURE);
}
