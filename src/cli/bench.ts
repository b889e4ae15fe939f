import type { Command } from "commander";

export function registerBenchCommand(program: Command): void {
  program
    .command("bench")
    .description("Measure startup, lazy loading and disk use across runtimes and rootfs strategies");
}
