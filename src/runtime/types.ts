import type { Readable, Writable } from "node:stream";
import type { RunConfig } from "../image/types.js";
import type { NetworkMode, PortMapping } from "../network/types.js";
import type { Scope } from "../util/scope.js";
import type { RunDir } from "./rundir.js";

/** Every runtime `kindling run --runtime` names (runtimes.ts: what implements each). */
export const RUNTIME_NAMES = ["runc", "runsc", "qemu", "firecracker"] as const;
export type RuntimeName = (typeof RUNTIME_NAMES)[number];

export const ROOTFS_STRATEGIES = ["lazy", "squashfs", "copy", "virtiofs"] as const;
export type RootfsStrategy = (typeof ROOTFS_STRATEGIES)[number];

/** One `-v SRC:DST[:ro]`: SRC is an existing absolute host path, DST an absolute container path. */
export interface VolumeSpec {
  source: string;
  destination: string;
  readOnly: boolean;
}

/** `-u UID[:GID]` or the image's USER: names are resolved against the image's /etc/passwd later. */
export interface UserSpec {
  user: string;
  group?: string;
}

/** The validated `kindling run` flags. Everything here is checked; runtimes may trust it. */
export interface RunOptions {
  /** auto: the VM runtime this host runs best, decided when the run starts (not while parsing). */
  runtime: RuntimeName | "auto";
  rootfs: RootfsStrategy;
  image: string;
  /** Arguments after `--`: replace the image's CMD (the ENTRYPOINT stays, as with Docker). */
  command: string[];
  /** `--entrypoint`: replaces the image's ENTRYPOINT and drops its CMD (as with Docker). */
  entrypoint?: string[];
  volumes: VolumeSpec[];
  /** `-e` in order, already resolved to K=V (`-e K` takes K from kindling's own environment). */
  env: string[];
  workdir?: string;
  user?: UserSpec;
  memoryMiB?: number;
  cpus?: number;
  /** Seconds before the container is stopped (TERM, then KILL after stopGraceSeconds). */
  timeoutSeconds?: number;
  /** Seconds between TERM and KILL when stopping (timeout, Ctrl-C). */
  stopGraceSeconds: number;
  hostname?: string;
  /** `-i`: pass kindling's stdin to the process (otherwise it reads /dev/null). */
  interactive: boolean;
  /** `-t`: the process runs on a pseudo-terminal (stdout and stderr merged, as a terminal shows them). */
  tty?: boolean;
  /** `--disk SIZE` (VM runtimes): bytes of a sparse ext4 scratch drive for the writable layer; default tmpfs. */
  diskBytes?: number;
  /** `--mount-packing` (VM runtimes, block-only strategies): all -v mounts in two drives (default), or one each. */
  mountPacking?: "pack" | "per-mount";
  /** `--network` (default bridge: the CNI network, src/network). */
  network?: NetworkMode;
  /** `-p`: ports published on the host (bridge only). */
  publish?: PortMapping[];
  /** `--dns`: nameservers for the container's /etc/resolv.conf (default: the host's, by Docker's rules). */
  dns?: string[];
  /** `--agent` (VM runtimes): the guest agent's channel; default vsock where vhost-device-vsock is installed (QEMU). */
  agent?: "vsock" | "serial";
}

/** The process to run: the one description every runtime uses (runc's config.json, the agent's START). */
export type { ProcessSpec } from "../vm/spec.js";

/** An opened block image file. */
export interface OpenBlockImage {
  path: string;
  /** Where the file's SquashFS is already mounted read-only and shared, if the provider does that. */
  mountedAt?: string;
  close(): Promise<void>;
  /** Keeps the file served while process `pid` lives (a container that may outlive this CLI). */
  holdFor?(pid: number): Promise<void>;
  /** What went wrong serving the file so far (a dead daemon, reads that failed), if anything. */
  problem?(): Promise<string | undefined>;
  /**
   * Resolves once what problem() compares against (the counters before the run) is known: awaited
   * before the container's process starts, so the work of asking overlaps the rest of the prep.
   */
  ready?: Promise<unknown>;
}

/** Where a block image file (a SquashFS) comes from: the lazy FUSE file, or a plain file in tests. */
export interface BlockImageProvider {
  /** A description for errors and owner.json. */
  readonly description: string;
  /** `mounted`: the caller wants the SquashFS mounted too (runc/runsc lower layers), if it can. */
  open(opts?: { mounted?: boolean }): Promise<OpenBlockImage>;
}

/** An image, resolved: its run config and its block image. */
export interface ResolvedImage {
  name: string;
  config: RunConfig;
  blockImage: BlockImageProvider;
}

/** A terminal's size in characters. */
export interface TtySize {
  rows: number;
  cols: number;
}

/** How the container's stdio is wired: inherit kindling's, pipe (caller reads), or /dev/null. */
export type StdioMode = "inherit" | "pipe" | "ignore";
export interface RunStdio {
  /** A stream: what it yields is the process's stdin (a supervisor relaying an attached client's). */
  stdin: StdioMode | Readable;
  stdout: StdioMode;
  stderr: StdioMode;
  /**
   * `-t`: the process's stdio is a pty of this size (read when the process starts; later sizes go
   * through Container.resize). Its output then comes on stdout only; stderr is null.
   */
  tty?: TtySize;
}

/** What a runtime gets to prepare one container. */
export interface PrepareRequest {
  id: string;
  runDir: RunDir;
  image: ResolvedImage;
  options: RunOptions;
  stdio: RunStdio;
}

/** How a container ended. `status` is what `kindling run` exits with. */
export interface ExitStatus {
  status: number;
  /** Set when the process died of a signal (status = 128 + n). */
  signal?: NodeJS.Signals;
  /** A message for the user when the runtime, not the process, decided the status (e.g. 127). */
  message?: string;
  /**
   * Something went wrong under the process (e.g. its image could not be read). With a non-zero
   * status it is kindling's failure (125); with status 0 a warning.
   */
  problem?: string;
}

/** A signal name without "SIG" (TERM, KILL, USR1...), as `runc kill` takes it. */
export type KillSignal = string;

/** A second process in a running container (`kindling exec`): the container's process spec, these args. */
export interface ExecSpec {
  args: string[];
  /** K=V entries added to (and overriding) the container process's environment. */
  env: string[];
  /** Default: the container process's working directory. */
  cwd?: string;
}

/** Where an exec'd process's stdio goes; stdin undefined = /dev/null. */
export interface ExecIo {
  stdin?: Readable;
  stdout: Writable;
  stderr: Writable;
  /** `exec -t`: a pty of this size; its output goes to stdout. */
  tty?: TtySize;
}

/** An exec'd process: its end (status as for the container) and a way to signal it. */
export interface ExecProcess {
  exited: Promise<ExitStatus>;
  kill(signal: KillSignal): void;
  /** With a tty: a new window size (the process gets SIGWINCH). */
  resize?(size: TtySize): void;
}

/**
 * One container of a runtime, in the spirit of beta9's pkg/runtime: prepare (done by the Runtime,
 * everything acquired is registered in the scope), then start / wait / kill / delete.
 */
export interface Container {
  readonly id: string;
  /** Starts the process; returns its piped streams (null where not piped). */
  start(): Promise<{ stdout: Readable | null; stderr: Readable | null }>;
  /** Resolves when the process has ended; rejects with a KindlingError if the runtime failed. */
  wait(): Promise<ExitStatus>;
  /** Sends a signal to the process; a container that already ended is not an error. */
  kill(signal: KillSignal): Promise<void>;
  /** Runs another process in the running container (runc exec; a VM's agent START). */
  exec?(spec: ExecSpec, io: ExecIo): Promise<ExecProcess>;
  /** With a tty (RunStdio.tty): a new window size for the process's terminal. */
  resize?(size: TtySize): void;
  /** Releases the container (idempotent); the scope calls it too. */
  delete(): Promise<void>;
  /** VM runtimes: host-side rootfs preparation in prepare() (strategy, -v drives), ms. */
  readonly prepMs?: number;
  /** VM runtimes: VMM spawn to the guest agent's READY, ms (the VM boots in prepare()). */
  readonly bootMs?: number;
}

export interface Runtime {
  readonly name: RuntimeName;
  /** Throws a KindlingError naming what this host lacks (binary, device) to run it. */
  checkHost(): Promise<void>;
  /** Builds the rootfs and whatever the runtime needs; everything acquired is released by `scope`. */
  prepare(req: PrepareRequest, scope: Scope): Promise<Container>;
}
