import type { Command } from "commander";
import { configure } from "../config/index.js";
import { teardownInBackground } from "../network/teardown.js";
import { resolveImage } from "../runtime/image.js";
import { runContainer, type StopReason } from "../runtime/lifecycle.js";
import { parseRunOptions, type RawRunFlags } from "../runtime/options.js";
import { runtimeFor } from "../runtime/runtimes.js";
import { KindlingError } from "../util/errors.js";
import { KindlingHome } from "../util/home.js";

const collect = (value: string, previous: string[]) => [...previous, value];

type RunFlags = RawRunFlags & { detach?: boolean; name?: string; rm?: boolean };

export function registerRunCommand(program: Command): void {
  program
    .command("run")
    .description("Run a container from an image; exits with the process's status (125: kindling failed)")
    .argument("<image>", "image name, or the path of a SquashFS file")
    .argument("[command...]", "command and arguments (after --), replacing the image's CMD")
    .option(
      "--runtime <name>",
      "runc | runsc | qemu | firecracker | auto (default: $KINDLING_RUNTIME, else auto: the VM runtime `kindling doctor` picks, Firecracker where usable, else QEMU)",
    )
    .option("--rootfs <strategy>", "lazy | squashfs | copy | virtiofs", "lazy")
    .option("-v, --volume <SRC:DST[:ro]>", "bind mount a host path (repeatable)", collect, [])
    .option("-e, --env <K=V>", "set an environment variable; K alone copies ours (repeatable)", collect, [])
    .option("-w, --workdir <dir>", "working directory inside the container")
    .option("-u, --user <uid[:gid]>", "user (and group) to run as")
    .option("--memory <MiB>", "memory limit in MiB")
    .option("--cpus <n>", "CPU limit, e.g. 1 or 0.5")
    .option("--timeout <seconds>", "stop the container after this many seconds")
    .option("--stop-timeout <seconds>", "seconds between TERM and KILL when stopping", "10")
    .option("--hostname <name>", "host name inside the container")
    .option("--entrypoint <cmd>", "replace the image's ENTRYPOINT (a program, or a JSON array)")
    .option("-i, --interactive", "pass our stdin to the process")
    .option("--disk <size>", "VM runtimes: sparse ext4 scratch drive for the writable layer (default: tmpfs)")
    .option("--mount-packing <mode>", "VM runtimes: pack (-v mounts in two drives, default) | per-mount")
    .option(
      "--agent <channel>",
      "qemu: the guest agent's channel, vsock (default where vhost-device-vsock is installed) | serial",
    )
    .option(
      "--network <mode>",
      "bridge (a CNI network, default) | none (loopback only) | host (runc/runsc only)",
    )
    .option(
      "-p, --publish <[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]>",
      "publish a container port on the host (repeatable)",
      collect,
      [],
    )
    .option("--dns <ip>", "nameserver for the container's /etc/resolv.conf (repeatable)", collect, [])
    .option("-d, --detach", "run in the background under the service; print the container's id")
    .option("--name <name>", "with -d: the container's name")
    .option("--rm", "with -d: remove the container once it ends (an attached run always leaves nothing)")
    .action(async (image: string, command: string[], flags: RunFlags) => {
      if (flags.detach) {
        const { runDetached } = await import("./containers.js");
        return runDetached(image, command, flags);
      }
      if (flags.name !== undefined) {
        throw new KindlingError("--name needs -d: an attached run keeps no container record");
      }
      // flag > KINDLING_RUNTIME > auto; re-pinned (with main's flags) so everything below sees the same
      const cfg = configure(process.env, { runtime: flags.runtime });
      const home = new KindlingHome(cfg.home);
      const options = await parseRunOptions(image, command, { ...flags, runtime: cfg.runtime }, process.env);
      // auto is decided here, when the run starts, not while parsing flags (it probes the host)
      const runtime = await runtimeFor(options);
      // the process exits once the status is known: the network's teardown goes to a process of its own
      teardownInBackground(true);
      const handle = runContainer({ home, options, image: await resolveImage(home, image), runtime });
      // Ours, not main.ts's: stop the container (TERM, grace, KILL), then exit with its status.
      const signals: StopReason[] = ["SIGINT", "SIGTERM", "SIGHUP"];
      const onSignal = (s: NodeJS.Signals) => handle.stop(s as StopReason);
      for (const s of signals) process.on(s, onSignal);
      try {
        const result = await handle.result;
        if (result.message) process.stderr.write(`kindling: ${result.message}\n`);
        if (result.stoppedBy) {
          const why =
            result.stoppedBy === "timeout" ? `--timeout ${options.timeoutSeconds}s` : result.stoppedBy;
          const sig = result.signal ? ` (${result.signal})` : "";
          process.stderr.write(
            `kindling: container ${result.id} stopped by ${why}: status ${result.status}${sig}\n`,
          );
        }
        process.exitCode = result.status;
      } finally {
        for (const s of signals) process.off(s, onSignal);
      }
    });
}
