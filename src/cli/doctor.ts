import type { Command } from "commander";
import { config } from "../config/index.js";
import { formatReport, runDoctor } from "../doctor/report.js";
import { KindlingError } from "../util/errors.js";
import { KindlingHome } from "../util/home.js";

export function registerDoctorCommand(program: Command): void {
  program
    .command("doctor")
    .description("Report which runtimes this host can run, and why not")
    .option("--json", "print the report as JSON")
    .option("--fix", "release what dead runs left: this home's, and the network of homes that are gone")
    .action(async (opts: { json?: boolean; fix?: boolean }) => {
      if (opts.fix) return fix();
      const report = await runDoctor();
      process.stdout.write(opts.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
    });
}

/** One line per thing released; a problem that left something behind makes it fail (exit 125). */
async function fix(): Promise<void> {
  const [{ cleanupStaleRuns }, { sweepNetwork }] = await Promise.all([
    import("../runtime/rundir.js"),
    import("../network/sweep.js"),
  ]);
  const runs = await cleanupStaleRuns(new KindlingHome(config().home));
  const net = await sweepNetwork({ full: true });
  const lines = [
    ...runs.cleaned.map((id) => `released dead run ${id}`),
    ...net.released.map((r) => `released ${r}`),
  ];
  process.stdout.write(lines.length > 0 ? `${lines.join("\n")}\n` : "nothing to release\n");
  const errors = [...runs.errors, ...net.errors];
  if (errors.length > 0) throw new KindlingError(`could not release everything: ${errors.join("; ")}`);
}
