import type { Command } from "commander";
import { configure } from "../config/index.js";
import { type RunFlags, runAttached, runDetached } from "./run-client.js";
import { RUN_FLAGS } from "./run-flags.js";

const collect = (value: string, previous: string[]) => [...previous, value];

export function registerRunCommand(program: Command): void {
  const run = program
    .command("run")
    .description("Run a container from an image; exits with the process's status (125: kindling failed)")
    .argument("<image>", "image name, or the path of a SquashFS file")
    .argument("[command...]", "command and arguments (after --), replacing the image's CMD");
  // one table for this parser and the thin entry's (run-flags.ts)
  for (const f of RUN_FLAGS) {
    if (f.repeat) run.option(f.flags, f.description, collect, []);
    else if (f.default !== undefined) run.option(f.flags, f.description, f.default);
    else run.option(f.flags, f.description);
  }
  run.action(async (image: string, command: string[], flags: RunFlags) => {
    // flag > KINDLING_RUNTIME > auto; re-pinned (with main's flags): a bad value is an error here
    configure(process.env, { runtime: flags.runtime });
    if (flags.detach) return runDetached(image, command, flags);
    process.exitCode = await runAttached(image, command, flags);
  });
}
