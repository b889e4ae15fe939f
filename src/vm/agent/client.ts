import { EventEmitter } from "node:events";
import { constants } from "node:os";
import type { Duplex, Readable, Writable } from "node:stream";
import { KindlingError } from "../../util/errors.js";
import {
  CHUNK,
  encodeConfigure,
  encodeFrame,
  encodeNetwork,
  encodeResize,
  encodeSetup,
  encodeStart,
  type Frame,
  FrameDecoder,
  type GuestConfig,
  type GuestNetwork,
  type GuestSetup,
  MsgType,
  PayloadReader,
  PayloadWriter,
  STDIN_WINDOW,
  type StartSpec,
  type StartStep,
  startStepName,
  type TtySize,
} from "./protocol.js";

/**
 * The guest could not start a process (FAILED): its errno and the step that failed, so a caller decides
 * on them (e.g. 127 for a command that is not there) instead of on the message's text.
 */
export class StartFailedError extends KindlingError {
  constructor(
    message: string,
    /** errno in the guest (Linux numbering) */
    readonly errno: number,
    readonly step: StartStep,
  ) {
    super(message, "ESTARTFAILED");
    this.name = "StartFailedError";
  }
}

export interface ReadyInfo {
  protocolVersion: number;
  kernelRelease: string;
}

export interface ProcessExit {
  /** exit code, or 128+n when killed by signal n */
  status: number;
  /** the signal that killed it, 0 if it exited */
  signal: number;
}

export interface ProcessIo {
  /** where stdout goes; undefined = discarded */
  stdout?: Writable;
  stderr?: Writable;
  /** fed to the process's stdin (a pipe); undefined = /dev/null */
  stdin?: Readable;
  /** a pty of this size for the process's stdin, stdout and stderr (its output comes as stdout) */
  tty?: TtySize;
}

/** A process running in the guest. */
export class GuestProcess {
  /** resolves when the process has exited and all its output was written to the sinks */
  readonly exited: Promise<ProcessExit>;
  pid = 0;
  private resolveExit!: (e: ProcessExit) => void;
  private rejectExit!: (e: Error) => void;
  private stdinInFlight = 0;
  private readonly stdinQueue: Buffer[] = [];
  private stdinEnded = false;
  private stdinEofSent = false;

  constructor(
    readonly id: number,
    private readonly client: AgentClient,
    private readonly io: ProcessIo,
  ) {
    this.exited = new Promise((resolve, reject) => {
      this.resolveExit = resolve;
      this.rejectExit = reject;
    });
    this.exited.catch(() => {}); // callers that never await it must not crash the process
  }

  /** Sends a signal (number or name) to the process. */
  kill(signal: number | NodeJS.Signals = "SIGTERM"): void {
    const n = typeof signal === "number" ? signal : constants.signals[signal];
    if (!n) throw new KindlingError(`unknown signal ${signal}`);
    this.client.send(MsgType.SIGNAL, this.id, new PayloadWriter().u32(n).done());
  }

  /** A tty process's new window size. */
  resize(size: TtySize): void {
    this.client.send(MsgType.RESIZE, this.id, encodeResize(size));
  }

  /** @internal */
  attachStdin(): void {
    const input = this.io.stdin;
    if (!input) return;
    const onData = (chunk: Buffer | string) => {
      const buf = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
      for (let off = 0; off < buf.length; off += CHUNK) this.stdinQueue.push(buf.subarray(off, off + CHUNK));
      this.flushStdin();
    };
    const onEnd = () => {
      this.stdinEnded = true;
      this.flushStdin();
    };
    input.on("data", onData);
    input.on("end", onEnd);
    input.on("error", onEnd);
    this.detachStdin = () => {
      input.off("data", onData);
      input.off("end", onEnd);
      input.off("error", onEnd);
      input.pause();
      this.stdinQueue.length = 0;
    };
  }

  /** Stops reading the host's stdin (the process is gone, or the channel). */
  private detachStdin: () => void = () => {};

  /** Sends queued stdin within the guest's window; pauses the source while the window is full. */
  private flushStdin(): void {
    while (this.stdinQueue.length > 0 && this.stdinInFlight < STDIN_WINDOW) {
      let chunk = this.stdinQueue.shift()!;
      const room = STDIN_WINDOW - this.stdinInFlight;
      if (chunk.length > room) {
        this.stdinQueue.unshift(chunk.subarray(room));
        chunk = chunk.subarray(0, room);
      }
      this.stdinInFlight += chunk.length;
      this.client.send(MsgType.STDIN, this.id, chunk);
    }
    if (this.stdinQueue.length > 0) this.io.stdin?.pause();
    else if (!this.stdinEnded) this.io.stdin?.resume();
    if (this.stdinEnded && this.stdinQueue.length === 0 && !this.stdinEofSent) {
      this.stdinEofSent = true;
      this.client.send(MsgType.STDIN_EOF, this.id);
    }
  }

  /** Credit held back per sink until it drains: [stdout bytes, stderr bytes]. */
  private readonly heldCredit = new Map<Writable, [number, number]>();

  /** @internal */
  onFrame(f: Frame): void {
    switch (f.type) {
      case MsgType.STDOUT:
      case MsgType.STDERR:
        this.output(
          f.type === MsgType.STDOUT ? this.io.stdout : this.io.stderr,
          f.type === MsgType.STDOUT ? 0 : 1,
          f.payload,
        );
        break;
      case MsgType.STDIN_CREDIT:
        this.stdinInFlight -= new PayloadReader(f.payload).u32();
        this.flushStdin();
        break;
      case MsgType.EXITED: {
        // every output chunk precedes EXITED and was handed to its sink with write()
        const r = new PayloadReader(f.payload);
        const exit = { status: r.u32(), signal: r.u32() };
        this.detachStdin();
        this.resolveExit(exit);
        break;
      }
    }
  }

  private sendCredit(stdout: number, stderr: number): void {
    this.client.send(MsgType.OUTPUT_CREDIT, this.id, new PayloadWriter().u32(stdout).u32(stderr).done());
  }

  /**
   * Hands a chunk to its sink. The credit goes back at once while the sink accepts writes; once write()
   * says "full", credit is held (for every later chunk to that sink too) until one "drain".
   */
  private output(sink: Writable | undefined, stream: 0 | 1, data: Buffer): void {
    const credit: [number, number] = stream === 0 ? [data.length, 0] : [0, data.length];
    if (!sink || sink.destroyed || sink.writableEnded) {
      this.sendCredit(...credit);
      return;
    }
    const ok = sink.write(data);
    const held = this.heldCredit.get(sink);
    if (held) {
      held[stream] += data.length;
      return;
    }
    if (ok) {
      this.sendCredit(...credit);
      return;
    }
    this.heldCredit.set(sink, credit);
    const release = () => {
      sink.off("drain", release);
      sink.off("close", release);
      sink.off("error", release);
      const h = this.heldCredit.get(sink);
      this.heldCredit.delete(sink);
      if (h) this.sendCredit(...h);
    };
    sink.on("drain", release);
    sink.on("close", release);
    sink.on("error", release);
  }

  /** @internal */
  fail(err: Error): void {
    this.detachStdin();
    this.rejectExit(err);
  }
}

/**
 * The host side of the agent protocol over any byte stream (a virtio-serial chardev socket under QEMU,
 * the hybrid vsock Unix socket under Firecracker). Writes nothing before the guest's READY.
 * Emits "close" (with an Error when the channel ended abnormally) once.
 */
export class AgentClient extends EventEmitter {
  private readonly decoder = new FrameDecoder();
  private readonly procs = new Map<number, GuestProcess>();
  private readonly pendingStarts = new Map<
    number,
    { proc: GuestProcess; resolve: (p: GuestProcess) => void; reject: (e: Error) => void }
  >();
  private pendingConfigure?: { resolve: () => void; reject: (e: Error) => void };
  private readyInfo?: ReadyInfo;
  private readonly readyWaiters: { resolve: (r: ReadyInfo) => void; reject: (e: Error) => void }[] = [];
  private closedError?: Error;
  private nextId = 1;

  constructor(private readonly stream: Duplex) {
    super();
    stream.on("data", (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (err) {
        this.shutdown(err as Error);
        return;
      }
      for (const f of frames) this.dispatch(f);
    });
    stream.on("error", (err) => this.shutdown(new KindlingError(`VM agent channel failed: ${err.message}`)));
    stream.on("close", () => this.shutdown(new KindlingError("VM agent channel closed")));
    stream.on("end", () => this.shutdown(new KindlingError("VM agent channel closed")));
  }

  get isReady(): boolean {
    return this.readyInfo !== undefined;
  }

  /** Resolves on the guest's first READY. */
  ready(): Promise<ReadyInfo> {
    if (this.readyInfo) return Promise.resolve(this.readyInfo);
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => this.readyWaiters.push({ resolve, reject }));
  }

  /** Hostname and mounts, before the first process. Rejects with the guest's reason on failure. */
  configure(cfg: GuestConfig): Promise<void> {
    return this.exchange(MsgType.CONFIGURE, () => encodeConfigure(cfg));
  }

  /** One message the guest answers with CONFIGURED (CONFIGURE, NETWORK, SETUP): one at a time. */
  private async exchange(type: MsgType, payload: () => Buffer): Promise<void> {
    await this.ready();
    if (this.pendingConfigure) throw new KindlingError("configure is already in progress");
    return new Promise((resolve, reject) => {
      this.pendingConfigure = { resolve, reject };
      this.send(type, 0, payload());
    });
  }

  /**
   * A guest restored from a snapshot said READY before the snapshot, to another host process: take its
   * READY as said (the guest repeats READY only until the host first speaks).
   */
  assumeReady(info: ReadyInfo): void {
    if (this.readyInfo || this.closedError) return;
    this.readyInfo = info;
    for (const w of this.readyWaiters.splice(0)) w.resolve(info);
  }

  /** A snapshot VM's SETUP (clock, entropy, root options): resolves once its root is mounted. */
  setup(s: GuestSetup): Promise<void> {
    return this.exchange(MsgType.SETUP, () => encodeSetup(s));
  }

  /** The guest's eth0 and resolv.conf, before CONFIGURE. Rejects with the guest's reason on failure. */
  network(net: GuestNetwork): Promise<void> {
    return this.exchange(MsgType.NETWORK, () => encodeNetwork(net));
  }

  /** Starts a process; resolves once it runs (rejects with a StartFailedError if it cannot start). */
  async start(spec: StartSpec, io: ProcessIo = {}): Promise<GuestProcess> {
    await this.ready();
    if (this.closedError) throw this.closedError;
    const id = this.nextId++;
    const proc = new GuestProcess(id, this, io);
    const started = new Promise<GuestProcess>((resolve, reject) =>
      this.pendingStarts.set(id, { proc, resolve, reject }),
    );
    this.procs.set(id, proc);
    this.send(MsgType.START, id, encodeStart(spec, io.stdin !== undefined, io.tty));
    return started;
  }

  /** Asks the guest to kill everything and power off (the VMM then exits). */
  powerOff(): void {
    if (this.readyInfo && !this.closedError) this.send(MsgType.POWEROFF, 0);
  }

  /** @internal */
  send(type: number, id: number, payload?: Buffer): void {
    if (this.closedError || !this.readyInfo) return;
    this.stream.write(encodeFrame(type, id, payload));
  }

  close(): void {
    this.shutdown(new KindlingError("VM agent channel closed"));
    this.stream.destroy();
  }

  private dispatch(f: Frame): void {
    switch (f.type) {
      case MsgType.READY: {
        if (this.readyInfo) return; // repeated until we speak: ignore the extras
        const r = new PayloadReader(f.payload);
        this.readyInfo = { protocolVersion: r.u32(), kernelRelease: r.bytes().toString() };
        for (const w of this.readyWaiters.splice(0)) w.resolve(this.readyInfo);
        this.emit("ready", this.readyInfo);
        return;
      }
      case MsgType.CONFIGURED: {
        const r = new PayloadReader(f.payload);
        const errno = r.u32();
        const msg = r.bytes().toString();
        const p = this.pendingConfigure;
        this.pendingConfigure = undefined;
        if (errno === 0) p?.resolve();
        else p?.reject(new KindlingError(`guest setup failed: ${msg}`));
        return;
      }
      case MsgType.STARTED: {
        const pending = this.pendingStarts.get(f.id);
        if (!pending) return;
        this.pendingStarts.delete(f.id);
        pending.proc.pid = new PayloadReader(f.payload).u32();
        pending.proc.attachStdin();
        pending.resolve(pending.proc);
        return;
      }
      case MsgType.FAILED: {
        const r = new PayloadReader(f.payload);
        const errno = r.u32();
        const message = r.bytes().toString();
        const err = new StartFailedError(message, errno, startStepName(r.u32()));
        const pending = this.pendingStarts.get(f.id);
        if (pending) {
          this.pendingStarts.delete(f.id);
          this.procs.delete(f.id);
          pending.reject(err);
        } else if (f.id === 0) {
          this.emit("protocolError", err);
        }
        return;
      }
      default: {
        const proc = this.procs.get(f.id);
        if (!proc) return;
        proc.onFrame(f);
        if (f.type === MsgType.EXITED) this.procs.delete(f.id);
      }
    }
  }

  private shutdown(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const w of this.readyWaiters.splice(0)) w.reject(err);
    for (const p of this.pendingStarts.values()) p.reject(err);
    this.pendingStarts.clear();
    for (const p of this.procs.values()) p.fail(err);
    this.procs.clear();
    this.pendingConfigure?.reject(err);
    this.pendingConfigure = undefined;
    this.emit("close", err);
  }
}
