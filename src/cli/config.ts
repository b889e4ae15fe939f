import type { Command } from "commander";
import { explainConfig } from "../config/index.js";

/** `kindling config`: every setting in effect, and whether it came from a flag, the environment or the default. */
export function registerConfigCommand(program: Command): void {
  program
    .command("config")
    .description("Show the settings in effect and where each came from (flag, environment, default)")
    .option("--json", "print them as JSON")
    .action((opts: { json?: boolean }) => {
      const rows = explainConfig(process.env);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
        return;
      }
      const shown = rows.map((r) => ({ ...r, text: r.value === undefined ? "-" : String(r.value) }));
      const w = Math.max(...shown.map((r) => r.env.length)) + 2;
      const v = Math.max(...shown.map((r) => r.text.length)) + 2;
      const lines = [`${"VARIABLE".padEnd(w)}${"VALUE".padEnd(v)}FROM`];
      for (const r of shown)
        lines.push(`${r.env.padEnd(w)}${r.text.padEnd(v)}${r.source === "flag" ? r.flag : r.source}`);
      process.stdout.write(`${lines.join("\n")}\n`);
    });
}
