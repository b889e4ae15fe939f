/**
 * `kindling run`'s flags, in one table that both parsers read: commander's (run.ts, for help and
 * every unusual form) and the thin entry's (thin.ts, the plain form, without loading commander).
 * So the two cannot drift: a flag added here exists in both (test/cli-thin.test.ts parses every
 * flag with both and compares). Plain data: thin.ts loads it on every `kindling run`.
 */

export interface RunFlagDef {
  /** As commander takes them: "-v, --volume <SRC:DST[:ro]>" (a `<value>` means it takes one). */
  flags: string;
  description: string;
  /** Repeatable: the values collect into an array (default []). */
  repeat?: boolean;
  /** Commander's default when not given (the thin path leaves it to the service's identical default). */
  default?: string;
}

export const RUN_FLAGS: readonly RunFlagDef[] = [
  {
    flags: "--runtime <name>",
    description:
      "runc | runsc | qemu | firecracker | auto (default: $KINDLING_RUNTIME, else auto: the VM runtime `kindling doctor` picks, Firecracker where usable, else QEMU)",
  },
  { flags: "--rootfs <strategy>", description: "lazy | squashfs | copy | virtiofs", default: "lazy" },
  { flags: "-v, --volume <SRC:DST[:ro]>", description: "bind mount a host path (repeatable)", repeat: true },
  {
    flags: "-e, --env <K=V>",
    description: "set an environment variable; K alone copies ours (repeatable)",
    repeat: true,
  },
  { flags: "-w, --workdir <dir>", description: "working directory inside the container" },
  { flags: "-u, --user <uid[:gid]>", description: "user (and group) to run as" },
  { flags: "--memory <MiB>", description: "memory limit in MiB" },
  { flags: "--cpus <n>", description: "CPU limit, e.g. 1 or 0.5" },
  { flags: "--timeout <seconds>", description: "stop the container after this many seconds" },
  {
    flags: "--stop-timeout <seconds>",
    description: "seconds between TERM and KILL when stopping",
    default: "10",
  },
  { flags: "--hostname <name>", description: "host name inside the container" },
  { flags: "--entrypoint <cmd>", description: "replace the image's ENTRYPOINT (a program, or a JSON array)" },
  { flags: "-i, --interactive", description: "pass our stdin to the process" },
  {
    flags: "-t, --tty",
    description: "a pseudo-terminal for the process (with -i on a terminal: ours in raw mode)",
  },
  {
    flags: "--disk <size>",
    description: "VM runtimes: sparse ext4 scratch drive for the writable layer (default: tmpfs)",
  },
  {
    flags: "--mount-packing <mode>",
    description: "VM runtimes: pack (-v mounts in two drives, default) | per-mount",
  },
  {
    flags: "--agent <channel>",
    description:
      "qemu: the guest agent's channel, vsock (default where vhost-device-vsock is installed) | serial",
  },
  {
    flags: "--network <mode>",
    description: "bridge (a CNI network, default) | none (loopback only) | host (runc/runsc only)",
  },
  {
    flags: "-p, --publish <[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]>",
    description: "publish a container port on the host (repeatable)",
    repeat: true,
  },
  {
    flags: "--dns <ip>",
    description: "nameserver for the container's /etc/resolv.conf (repeatable)",
    repeat: true,
  },
  { flags: "-d, --detach", description: "run in the background under the service; print the container's id" },
  { flags: "--name <name>", description: "the container's name (ps, logs, rm...)" },
  { flags: "--rm", description: "remove the container (its record and log) once it ends, as docker does" },
];

/** One spelling of a flag ("-v" or "--volume"): the field it sets, as commander names it. */
export interface FlagSpelling {
  field: string;
  takesValue: boolean;
  repeat: boolean;
}

/** commander's attribute name: "--stop-timeout" -> "stopTimeout". */
const fieldOf = (long: string) => long.slice(2).replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** Every spelling of every flag in `defs`, by spelling. */
export function flagSpellings(defs: readonly RunFlagDef[]): Map<string, FlagSpelling> {
  const out = new Map<string, FlagSpelling>();
  for (const d of defs) {
    const words = d.flags.split(/[ ,]+/);
    const names = words.filter((w) => w.startsWith("-"));
    const long = names.find((n) => n.startsWith("--"))!;
    const spelling = {
      field: fieldOf(long),
      takesValue: words.some((w) => w.startsWith("<")),
      repeat: !!d.repeat,
    };
    for (const n of names) out.set(n, spelling);
  }
  return out;
}
