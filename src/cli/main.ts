import { Command, CommanderError } from "commander";
import { configure } from "../config/index.js";
import { setDebug } from "../util/debug.js";
import { EXIT_KINDLING_FAILURE, errorMessage, KindlingError } from "../util/errors.js";
import { closeAllScopes } from "../util/scope.js";
import { registerBenchCommand } from "./bench.js";
import { registerCompletionCommand } from "./completion.js";
import { registerConfigCommand } from "./config.js";
import { registerContainerCommands } from "./containers.js";
import { registerDaemonCommand } from "./daemon.js";
import { registerDoctorCommand } from "./doctor.js";
import { registerImageCommands } from "./image.js";
import { registerLoginCommands } from "./login.js";
import { registerRunCommand } from "./run.js";

const program = new Command("kindling")
  .description("Run OCI images in microVMs and with runc/gVisor on a lazily loaded root filesystem")
  .option("--debug", "print debug lines (which credentials and mirrors were used); also KINDLING_DEBUG=1")
  .showHelpAfterError()
  .exitOverride()
  // Settings are read once, before any command runs: a bad KINDLING_* value is an error here (125).
  .hook("preAction", () => {
    const cfg = configure(process.env, { debug: program.opts().debug ? "1" : undefined });
    setDebug(cfg.debug);
  });

registerImageCommands(program);
registerRunCommand(program);
registerContainerCommands(program);
registerDaemonCommand(program);
registerDoctorCommand(program);
registerConfigCommand(program);
registerBenchCommand(program);
registerLoginCommands(program);
registerCompletionCommand(program);

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
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exit(err.exitCode === 0 ? 0 : 2);
  }
  const msg = err instanceof KindlingError ? err.message : ((err as Error)?.stack ?? errorMessage(err));
  process.stderr.write(`kindling: ${msg}\n`);
  await closeAllScopes();
  process.exit(EXIT_KINDLING_FAILURE);
}
