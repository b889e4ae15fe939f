import type { Command } from "commander";

export function registerImageCommands(program: Command): void {
  program.command("image").description("Import, pull, push, list, inspect, export, mount and remove images");
}
