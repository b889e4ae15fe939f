import cliProgress from "cli-progress";
import { type Command, InvalidArgumentError } from "commander";
import { config } from "../config/index.js";
import { KindlingHome } from "../util/home.js";
import { type BuildProgress, buildKernel } from "../vm/kernel-build.js";

/** `kindling kernel build`: Kindling's guest kernel from Debian's source package (src/vm/kernel-build.ts). */
export function registerKernelCommands(program: Command): void {
  const kernel = program.command("kernel").description("Kindling's own guest kernel");
  kernel
    .command("build")
    .description(
      "build the guest kernel from Debian's linux-source package with guest/kernel/kindling.config (~5 min on 2 cores)",
    )
    .option("--force", "build again even when this source and configuration are cached")
    .option("-j, --jobs <n>", "parallel compile jobs (default: the number of CPUs)", (v: string) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("expected a positive integer");
      return n;
    })
    .action(async ({ force, jobs }: { force?: boolean; jobs?: number }) => {
      const home = new KindlingHome(config().home).ensure();
      const show = display();
      // Ctrl-C: kill make and remove the tree before exiting (the build's own cleanup, not a race with exit)
      const abort = new AbortController();
      const onSignal = () => abort.abort();
      process.on("SIGINT", onSignal);
      process.on("SIGTERM", onSignal);
      try {
        const k = await buildKernel(home, { force, jobs, onProgress: show.update, signal: abort.signal });
        show.stop();
        process.stdout.write(`${k.vmlinux}\n`);
        process.stderr.write(`kindling: guest kernel ${k.release} (source ${k.sourceVersion}) ready\n`);
      } finally {
        show.stop();
        process.off("SIGINT", onSignal);
        process.off("SIGTERM", onSignal);
      }
    });
}

/** A bar on a terminal; otherwise one line per phase and every 10% of the compile. */
function display(stream: NodeJS.WriteStream = process.stderr) {
  let bar: cliProgress.SingleBar | undefined;
  let phase = "";
  let nextTenth = 1;
  return {
    update(p: BuildProgress) {
      if (stream.isTTY) {
        if (!bar) {
          bar = new cliProgress.SingleBar(
            { stream, format: "kernel {phase} [{bar}] {percentage}% {current}", hideCursor: true },
            cliProgress.Presets.shades_classic,
          );
          bar.start(p.total, 0, { phase: p.phase, current: "" });
        }
        bar.update(p.done, { phase: p.phase, current: p.current ?? "" });
        return;
      }
      if (p.phase !== phase) {
        phase = p.phase;
        stream.write(`kindling: kernel build: ${phase}\n`);
      }
      if (p.phase === "compile" && p.done / p.total >= nextTenth / 10) {
        stream.write(`kindling: kernel build: ${nextTenth * 10}%\n`);
        nextTenth++;
      }
    },
    stop() {
      bar?.stop();
      bar = undefined;
    },
  };
}
