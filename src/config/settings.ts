/**
 * Every setting Kindling reads from its environment, in one table: adding a setting is adding a row
 * here (the README's environment table is checked against it by test/config.test.ts).
 */
import os from "node:os";
import {
  boolean,
  bytes,
  count,
  integer,
  matching,
  milliseconds,
  oneOf,
  text,
  type ValueType,
} from "./types.js";

export interface Setting<T> {
  /** The environment variable. */
  readonly env: string;
  /** The command-line flag that overrides it, if any (flag > environment > default). */
  readonly flag?: string;
  readonly type: ValueType<T>;
  /**
   * The value when neither flag nor variable is set. A function gets the settings above it in this
   * table (already resolved), for defaults that depend on another setting.
   */
  readonly default: T | ((resolved: Readonly<Record<string, unknown>>) => T);
  /** The default as the README shows it, when `default` is a function or undefined. */
  readonly defaultText?: string;
  /** One line for the README's table. */
  readonly describe: string;
  /** Never shown (`kindling config` says only whether it is set). */
  readonly secret?: boolean;
}

/** Keeps each row's value type while checking it is a Setting. */
const setting = <T>(s: Setting<T>): Setting<T> => s;

/** The runtimes `--runtime`/KINDLING_RUNTIME accept (test/config.test.ts checks it against src/runtime). */
export const RUNTIME_CHOICES = ["runc", "runsc", "qemu", "firecracker", "auto"] as const;
export type RuntimeChoice = (typeof RUNTIME_CHOICES)[number];

/** What the block image is compressed with unless a setting says otherwise (docs/image-pipeline.md). */
export const DEFAULT_BLOCK_COMPRESSION = "zstd:3";

export const SETTINGS = {
  home: setting({
    env: "KINDLING_HOME",
    type: text,
    default: "/var/lib/kindling",
    describe: "state directory",
  }),
  socket: setting({
    env: "KINDLING_SOCKET",
    type: text,
    default: (s) => `${String(s.home).replace(/\/+$/, "")}/kindling.sock`,
    defaultText: "`$KINDLING_HOME/kindling.sock`",
    describe: "the service's Unix socket (`kindling daemon`; the CLI's container commands connect to it)",
  }),
  runtime: setting<RuntimeChoice>({
    env: "KINDLING_RUNTIME",
    flag: "--runtime",
    type: oneOf(RUNTIME_CHOICES),
    default: "auto",
    describe:
      "runtime of `kindling run` (`--runtime` overrides); `auto`: Firecracker where usable, else QEMU, decided when the run starts",
  }),
  registryUser: setting<string | undefined>({
    env: "KINDLING_REGISTRY_USER",
    type: text,
    default: undefined,
    defaultText: "unset",
    describe: "registry user name for any registry (with the password, takes precedence over the auth file)",
  }),
  registryPassword: setting<string | undefined>({
    env: "KINDLING_REGISTRY_PASSWORD",
    type: text,
    default: undefined,
    defaultText: "unset",
    describe: "registry password for `KINDLING_REGISTRY_USER`",
    secret: true,
  }),
  authFile: setting<string | undefined>({
    env: "KINDLING_AUTH_FILE",
    type: text,
    default: undefined,
    defaultText: "unset",
    describe:
      "a Kindling-only auth file (docker format, helpers honoured); when set, no other auth file is read",
  }),
  registryAuthFile: setting<string | undefined>({
    env: "REGISTRY_AUTH_FILE",
    type: text,
    default: undefined,
    defaultText: "unset",
    describe: "the containers tools' auth file; when set, the only one read (after `KINDLING_AUTH_FILE`)",
  }),
  xdgRuntimeDir: setting<string | undefined>({
    env: "XDG_RUNTIME_DIR",
    type: text,
    default: undefined,
    defaultText: "unset",
    describe: "`$XDG_RUNTIME_DIR/containers/auth.json` (podman, skopeo) is read before the docker config",
  }),
  dockerConfig: setting<string | undefined>({
    env: "DOCKER_CONFIG",
    type: text,
    default: undefined,
    defaultText: "`~/.docker`",
    describe:
      "the docker CLI's config directory: `config.json` there holds `auths`, `credsStore`, `credHelpers`",
  }),
  userHome: setting({
    env: "HOME",
    type: text,
    default: () => os.homedir(),
    defaultText: "the user's home directory",
    describe: "where `~/.docker/config.json` is looked for",
  }),
  registriesConf: setting({
    env: "KINDLING_REGISTRIES_CONF",
    type: text,
    default: "/etc/containers/registries.conf",
    describe: "mirrors and plain-HTTP registries, containers-registries.conf v2 format (`[[registry]]`)",
  }),
  debug: setting({
    env: "KINDLING_DEBUG",
    flag: "--debug",
    type: boolean,
    default: false,
    describe: "`1`: debug lines on stderr (which credentials, mirrors, registries.conf entries were used)",
  }),
  trace: setting<string | undefined>({
    env: "KINDLING_TRACE",
    type: text,
    default: undefined,
    defaultText: "unset",
    describe:
      "a file each process of a run (CLI, service, supervisor, lazy daemon) and of `image pull` appends timestamped steps to (measurement: `bench/cli-cost.ts --trace`, `bench/coldstart.ts`)",
  }),
  buildTmpfs: setting({
    env: "KINDLING_BUILD_TMPFS",
    type: boolean,
    default: true,
    describe: "build an image's tree in `/dev/shm` when it fits (`0`: always on disk)",
  }),
  buildTmpfsMaxBytes: setting({
    env: "KINDLING_BUILD_TMPFS_MAX",
    type: bytes,
    default: 4 * 1024 ** 3,
    defaultText: "4294967296 (4 GiB)",
    describe: "largest tree built on tmpfs, in bytes",
  }),
  blockCompression: setting({
    env: "KINDLING_BLOCK_COMPRESSION",
    flag: "--compression",
    // The grammar blockimage/squashfs.ts squashfsOptions() reads.
    type: matching(
      "compressor",
      /^(zstd(:([1-9]|1[0-9]|2[0-2]))?|lz4(:hc)?|gzip(:[1-9])?|xz|lzo|none)$/,
      "zstd[:1-22], lz4, lz4:hc, gzip[:1-9], xz, lzo or none",
    ),
    default: DEFAULT_BLOCK_COMPRESSION,
    describe:
      "the block image's SquashFS compression when an image is imported or converted from a registry (`image import --compression`): `zstd[:level]`, `lz4`, `lz4:hc`, `gzip[:level]`, `xz`, `lzo`, `none` (docs/image-pipeline.md)",
  }),
  fetchTimeoutMs: setting({
    env: "KINDLING_FETCH_TIMEOUT_MS",
    type: milliseconds,
    default: 30_000,
    describe: "total deadline for one chunk before the read gets EIO",
  }),
  fetchAttemptTimeoutMs: setting({
    env: "KINDLING_FETCH_ATTEMPT_TIMEOUT_MS",
    type: milliseconds,
    default: (s) => Math.min(10_000, s.fetchTimeoutMs as number),
    defaultText: "min(10000, `KINDLING_FETCH_TIMEOUT_MS`)",
    describe: "one fetch attempt of a chunk",
  }),
  fetchRetries: setting({
    env: "KINDLING_FETCH_RETRIES",
    type: count,
    default: 3,
    describe: "retries of a chunk fetch after the first attempt",
  }),
  lazyIdleMs: setting({
    env: "KINDLING_LAZY_IDLE_MS",
    type: milliseconds,
    default: 30_000,
    describe: "how long an image's shared lazy daemon stays after its last run",
  }),
  pullStartsDaemon: setting({
    env: "KINDLING_PULL_START_DAEMON",
    type: boolean,
    default: true,
    describe:
      "`image pull` of a lazily pulled image starts its lazy daemon in the background (mount, startup pack), so the first run finds it up; it leaves after `KINDLING_LAZY_IDLE_MS` unused (`0`: off)",
  }),
  serviceWarmImages: setting({
    env: "KINDLING_SERVICE_WARM_IMAGES",
    type: count,
    default: 8,
    describe:
      "images whose lazy daemon the service keeps running while it runs (least recently used evicted; `0`: none)",
  }),
  serviceSpareSupervisor: setting({
    env: "KINDLING_SERVICE_SPARE_SUPERVISOR",
    type: boolean,
    default: true,
    describe:
      "the service keeps one container supervisor started ahead of time, so a run does not wait for it to start (`0`: start one per container)",
  }),
  lazyDirectIo: setting({
    env: "KINDLING_LAZY_DIRECT_IO",
    type: boolean,
    default: false,
    describe: "`1`: mount the lazy file with `direct_io` (measurement only)",
  }),
  lazyKernelCache: setting({
    env: "KINDLING_LAZY_KERNEL_CACHE",
    type: boolean,
    default: true,
    describe: "`0`: mount the lazy file without `kernel_cache` (measurement only)",
  }),
  lazyKernelReadahead: setting({
    env: "KINDLING_LAZY_KERNEL_READAHEAD",
    type: integer("bytes", 0),
    default: 0,
    describe:
      "bytes of kernel readahead on the lazy file; above 0 its SquashFS loop device reads it through the page cache, so a long sequential read's blocks are requested ahead, in parallel (2.7x a cold `cat` of 64 MiB with 4 MiB), but a cold start fetches more (numpy: 53.6% of the image instead of 29.8%); `0`: direct I/O, one request per SquashFS block (docs/lazy.md)",
  }),
  lazyFileReadahead: setting({
    env: "KINDLING_LAZY_FILE_READAHEAD",
    type: integer("bytes", 0),
    default: 0,
    describe:
      "file-aware readahead: the first read of a file taking at most this many bytes of the block image fetches the rest of the file in parallel (`0`: off; measured not to pay for a cold `import numpy`, docs/benchmarks.md)",
  }),
  cniConfDir: setting<string | undefined>({
    env: "KINDLING_CNI_CONF_DIR",
    type: text,
    default: undefined,
    defaultText: "unset: Kindling's own bridge network per home",
    describe:
      "a CNI config directory: its first network (`.conflist`/`.conf`/`.json`, in name order) is `--network bridge`",
  }),
  networkPool: setting({
    env: "KINDLING_NETWORK_POOL",
    type: integer("count", 0, 16),
    default: 2,
    describe:
      "network namespaces the service keeps ready on the home's default network (made, attached, address leased), so a bridged run does not wait for CNI (`0`: none)",
  }),
  guestKernel: setting<"auto" | "built" | "debian">({
    env: "KINDLING_GUEST_KERNEL",
    type: oneOf(["auto", "built", "debian"] as const),
    default: "auto",
    describe:
      "guest kernel of VMs: `built` (Kindling's, from `kindling kernel build`), `debian` (Debian's cloud kernel with an initramfs of modules); `auto`: built when present",
  }),
  vmSnapshots: setting({
    env: "KINDLING_VM_SNAPSHOTS",
    type: boolean,
    default: true,
    describe:
      "QEMU VMs start from a snapshot of a booted guest (made by the first run of each VM shape, kept in `$KINDLING_HOME/snapshots`); `0`: every run boots",
  }),
  vmDebug: setting({
    env: "KINDLING_VM_DEBUG",
    type: boolean,
    default: false,
    describe: "`1`: guest kernel messages and init debug markers on the console",
  }),
  firecracker: setting({
    env: "KINDLING_FIRECRACKER",
    type: text,
    default: "firecracker",
    defaultText: "`firecracker` on `PATH`",
    describe: "path or name of the `firecracker` binary",
  }),
  jailer: setting({
    env: "KINDLING_JAILER",
    type: text,
    default: "jailer",
    defaultText: "`jailer` on `PATH`",
    describe: "path or name of Firecracker's `jailer` binary",
  }),
};

export type SettingName = keyof typeof SETTINGS;

/** The resolved configuration: one typed value per setting. */
export type Config = {
  readonly [K in SettingName]: (typeof SETTINGS)[K] extends Setting<infer T> ? T : never;
};
