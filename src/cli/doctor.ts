import type { Command } from "commander";

export function registerDoctorCommand(program: Command): void {
  program.command("doctor").description("Report which runtimes this host can run, and why not");
}
