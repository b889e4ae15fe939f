import { closeSync, writeSync } from "node:fs";
import { type Command, Option } from "commander";
import { config } from "../config/index.js";
import { KindlingError, userMessage } from "../util/errors.js";
import { KindlingHome } from "../util/home.js";

export function registerDaemonCommand(program: Command): void {
  program
    .command("daemon")
    .description(
      "run the Kindling service in the foreground (HTTP API on a Unix socket; see contrib/kindling.service)",
    )
    .option("--exit-idle <seconds>", "exit after this long with no container running and no request")
    .addOption(
      // for a client that starts us: "ok", "busy <message>" (another service holds the home) or
      // "error <message>" on this fd once listening (or not)
      new Option("--ready-fd <fd>").hideHelp(),
    )
    .action(async (opts: { exitIdle?: string; readyFd?: string }) => {
      const readyFd = opts.readyFd === undefined ? undefined : Number(opts.readyFd);
      const ready = (line: string) => {
        if (readyFd === undefined) return;
        try {
          writeSync(readyFd, `${line}\n`);
          closeSync(readyFd);
        } catch {
          // the client went away
        }
      };
      const { KindlingService, AlreadyRunning } = await import("../service/server.js");
      const { jsonLogger } = await import("../service/events.js");
      let idleExitMs: number | undefined;
      if (opts.exitIdle !== undefined) {
        const s = Number(opts.exitIdle);
        if (!(Number.isFinite(s) && s > 0))
          throw new KindlingError(`--exit-idle: ${opts.exitIdle} is not a number of seconds > 0`);
        idleExitMs = s * 1000;
      }
      const cfg = config();
      const home = new KindlingHome(cfg.home);
      const log = jsonLogger();
      const service = new KindlingService({
        home,
        socket: cfg.socket,
        log,
        idleExitMs,
        warmImages: cfg.serviceWarmImages,
        spareSupervisor: cfg.serviceSpareSupervisor,
      });
      try {
        await service.start();
      } catch (err) {
        ready(`${err instanceof AlreadyRunning ? "busy" : "error"} ${userMessage(err)}`);
        if (err instanceof AlreadyRunning) throw new KindlingError(err.message);
        throw err;
      }
      ready("ok");
      // SIGTERM/SIGINT: stop listening; containers keep running under their supervisors.
      for (const s of ["SIGINT", "SIGTERM"] as const) {
        process.removeAllListeners(s);
        process.on(s, () => void service.stop());
      }
      await service.whenClosed();
      process.exit(0); // watchers of containers still wait on their supervisors: leave them
    });
}
