import type { Command } from "commander";
import { configure } from "../config/index.js";
import { type RunFlags, runAttached, runDetached } from "./run-client.js";

const collect = (value: string, previous: string[]) => [...previous, value];

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
    .option("--name <name>", "the container's name (ps, logs, rm...)")
    .option("--rm", "remove the container (its record and log) once it ends, as docker does")
    .action(async (image: string, command: string[], flags: RunFlags) => {
      // flag > KINDLING_RUNTIME > auto; re-pinned (with main's flags): a bad value is an error here
      configure(process.env, { runtime: flags.runtime });
      if (flags.detach) return runDetached(image, command, flags);
      process.exitCode = await runAttached(image, command, flags);
    });
}
