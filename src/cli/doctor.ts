import type { Command } from "commander";
import { formatReport, runDoctor } from "../doctor/report.js";

export function registerDoctorCommand(program: Command): void {
  program
    .command("doctor")
    .description("Report which runtimes this host can run, and why not")
    .option("--json", "print the report as JSON")
    .action(async (opts: { json?: boolean }) => {
      const report = await runDoctor();
      process.stdout.write(opts.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
    });
}
