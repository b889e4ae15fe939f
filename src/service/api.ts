/**
 * The shapes the service's API answers with (api/openapi.yaml describes the same; the tests check
 * real responses against that document). Shared by the service and the client library.
 */
import type { ContainerStatus } from "./records.js";

export interface ApiError {
  code: string;
  message: string;
}

/** POST /v1/containers: what to run (the `kindling run` flags, as JSON). */
export interface ContainerCreateRequest {
  image: string;
  /** Replaces the image's CMD (arguments after `--`). */
  command?: string[];
  name?: string;
  runtime?: string;
  rootfs?: string;
  /** K=V entries. */
  env?: string[];
  /** SRC:DST[:ro] entries. */
  volumes?: string[];
  workdir?: string;
  user?: string;
  /** MiB. A string is read as the CLI flag is (the CLI sends its flags as typed, for the same errors). */
  memory?: number | string;
  cpus?: number | string;
  /** Seconds before the container is stopped. */
  timeout?: number | string;
  /** Seconds between TERM and KILL when stopping. */
  stopTimeout?: number | string;
  hostname?: string;
  /** A program, or the whole ENTRYPOINT as an array. */
  entrypoint?: string | string[];
  /** VM runtimes: ext4 scratch drive size (e.g. "2G"). */
  disk?: string;
  mountPacking?: "pack" | "per-mount";
  /** QEMU: the guest agent's channel, vsock | serial. */
  agent?: string;
  /** bridge (default) | none | host (runc/runsc). */
  network?: string;
  /** -p: [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp] entries. */
  publish?: string[];
  /** --dns: nameservers. */
  dns?: string[];
  /** Remove the container once its process has ended (`run --rm`). */
  autoRemove?: boolean;
  /**
   * An attached run (`kindling run` without -d): the container starts once a client attaches
   * (POST /v1/containers/{id}/attach, or the supervisor's socket), and a client that goes away
   * stops it. Not attached within 60 s: it ends with status 125.
   */
  attach?: boolean;
  /** With attach: the attached client's stdin is the process's (STDIN frames). */
  interactive?: boolean;
  /** `-t`: the process runs on a pseudo-terminal (stdout and stderr merged). */
  tty?: boolean;
  /** With tty: the terminal's size at start (default 24x80); an attached client's RESIZE frames change it. */
  ttySize?: { rows: number; cols: number };
  /**
   * The client's environment: the container's settings (KINDLING_* and the other variables of the
   * README's settings table) are resolved from it, as an in-process run would from its own. Absent:
   * the service's settings.
   */
  environment?: Record<string, string>;
  /** The client's working directory: relative `-v` sources and image paths are resolved against it. */
  cwd?: string;
}

export interface ContainerCreated {
  id: string;
  name: string;
}

/** One row of GET /v1/containers. */
export interface ContainerSummary {
  id: string;
  name: string;
  image: string;
  runtime: string;
  command: string[];
  status: ContainerStatus;
  created: string;
  startedAt: string | null;
  finishedAt: string | null;
  exitCode: number | null;
}

/** GET /v1/containers/{id}. */
export interface ContainerInspect extends ContainerSummary {
  rootfs: string;
  options: Record<string, unknown>;
  autoRemove: boolean;
  state: {
    status: ContainerStatus;
    exitCode: number | null;
    signal: string | null;
    error: string | null;
    stoppedBy: string | null;
    supervisorPid: number | null;
    prepMs: number | null;
    bootMs: number | null;
    firstOutputMs: number | null;
  };
  /** What it got on its network (mode, address, gateway, ports; src/network), null before it runs. */
  network: Record<string, unknown> | null;
  paths: { dir: string; log: string };
}

export interface ContainerExit {
  id: string;
  exitCode: number;
  signal: string | null;
  error: string | null;
}

export interface LogLine {
  time: string;
  stream: "stdout" | "stderr";
  /** The bytes, base64. */
  data: string;
}

export interface ServiceEvent {
  time: string;
  type: "container" | "image";
  action: "create" | "start" | "exit" | "remove" | "pull" | "import";
  id: string;
  name?: string;
  attributes?: Record<string, string | number | null>;
}

export interface Info {
  version: string;
  daemon: { pid: number; socket: string; home: string; startedAt: string; uptimeSeconds: number };
  containers: { total: number; running: number; exited: number };
  images: number;
  runtimes: { name: string; usable: boolean; reason: string }[];
}

export interface ImageSummary {
  name: string;
  digest: string;
  blockSize: number;
  origin: Record<string, unknown>;
  created: string;
}
