import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { type Command, InvalidArgumentError } from "commander";
import { prepBySizeSvg, timesSvg } from "../bench/charts.js";
import { machineInfo } from "../bench/machine.js";
import { benchMarkdown, hostSideTable, timingTable } from "../bench/markdown.js";
import { networkTable } from "../bench/network.js";
import { runBench } from "../bench/runner.js";
import { evaluateTargets, formatTargets } from "../bench/targets.js";

const collect = (value: string, previous: string[]) => [...previous, value];

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("expected a positive integer");
  return n;
}

interface BenchFlags {
  quick?: boolean;
  reps?: number;
  json?: boolean;
  filter: string[];
  out?: string;
  workDir?: string;
  warmup: boolean;
}

export function registerBenchCommand(program: Command): void {
  program
    .command("bench")
    .description("Measure startup, lazy loading and disk use across runtimes and rootfs strategies")
    .option("--quick", "the small image without bind mounts, every strategy: several minutes")
    .option("--reps <n>", "repetitions of each variant (the median is reported)", positiveInt, 3)
    .option("--json", "print the median rows as a JSON array on stdout")
    .option(
      "--filter <regex>",
      'run only variants whose "runtime:rootfs:image:bindMounts:cache" matches (repeatable)',
      collect,
      [],
    )
    .option("--out <dir>", "write bench.md, bench.json and the SVG charts there")
    .option("--no-warmup", "skip the unrecorded first run of each strategy")
    .option("--work-dir <dir>", "where the bench's homes, registry and bind-mount sources go", "/var/tmp")
    .action(async (flags: BenchFlags) => {
      let filters: RegExp[];
      try {
        filters = flags.filter.map((f) => new RegExp(f));
      } catch (err) {
        throw new InvalidArgumentError(`--filter: ${(err as Error).message}`);
      }
      const command = `kindling bench ${process.argv.slice(3).join(" ")}`.trim();
      const result = await runBench({
        quick: flags.quick ?? false,
        reps: flags.reps ?? 3,
        filters,
        workDir: flags.workDir,
        warmup: flags.warmup,
      });
      const targets = evaluateTargets(result.rows);
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(result.rows, null, 2)}\n`);
      } else {
        const lines = [
          `command: ${command}`,
          "",
          "Host side (not affected by TCG):",
          hostSideTable(result.rows),
          "",
          "End to end (under QEMU TCG a VM's times are dominated by the guest's own boot):",
          timingTable(result.rows),
          "",
          ...(result.network ? ["Network:", networkTable(result.network), ""] : []),
          ...result.skipped.map((s) => `skipped: ${s.what}: ${s.reason.split("\n")[0]}`),
          "",
          "Targets:",
          formatTargets(targets),
        ];
        process.stdout.write(`${lines.join("\n")}\n`);
      }
      if (flags.out) {
        await mkdir(flags.out, { recursive: true });
        const machine = await machineInfo();
        await writeFile(path.join(flags.out, "bench.json"), `${JSON.stringify(result, null, 2)}\n`);
        await writeFile(
          path.join(flags.out, "bench.md"),
          benchMarkdown({ command, machine, result, targets, reps: flags.reps ?? 3 }),
        );
        await writeFile(path.join(flags.out, "bench-times.svg"), timesSvg(result.rows));
        await writeFile(path.join(flags.out, "bench-prep-vs-size.svg"), prepBySizeSvg(result.rows));
      }
    });
}
