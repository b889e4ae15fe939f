/**
 * Spare supervisors: supervisor processes ready before a container needs one, so a new container
 * does not wait for Node to start and load them (bench/cli-cost.ts measures the difference).
 * - A fresh spare: started ahead of time, idle with its modules loaded (and rehearsed, warmup.ts).
 * - A reused supervisor: one whose container ended says "idle" on its stdout and waits for the
 *   next; its code has run a whole container already, and no process was started for it. It takes
 *   only a container whose settings equal its last one's (the trace file apart), so nothing a
 *   module kept from one container's settings can reach another's.
 * The service hands a container by writing its directory, one line, to the supervisor's stdin; it
 * keeps that pipe open while the supervisor lives. A supervisor whose stdin closes (the service
 * stopped or died) takes no next container: idle, it exits; busy, it exits once its container ended.
 */
import type { ChildProcess } from "node:child_process";
import type { Socket } from "node:net";
import { SPARE_NICE, setProcessNice } from "./priority.js";

/** Reused supervisors kept idle at most (more: the oldest is let go). */
const MAX_IDLE = 2;

/** A supervisor process the service can hand containers to. */
export class PooledSupervisor {
  /** Settings (as a key) of its last container; undefined while fresh. */
  settingsKey?: string;
  private text = "";
  private waiting?: (line: string) => void;

  constructor(
    readonly child: ChildProcess,
    /** It said "idle": its container ended and everything it held is released. */
    private readonly onIdle: (s: PooledSupervisor) => void,
  ) {
    child.stdin?.on("error", () => {});
    child.stdout?.on("data", (d: Buffer) => {
      this.text += d.toString();
      for (let nl = this.text.indexOf("\n"); nl >= 0; nl = this.text.indexOf("\n")) {
        const line = this.text.slice(0, nl);
        this.text = this.text.slice(nl + 1);
        if (line === "idle") this.onIdle(this);
        else this.deliver(line);
      }
    });
    const gone = () => this.deliver(`error the supervisor exited without a word${this.exitNote()}`);
    child.stdout?.on("end", gone);
    child.on("exit", gone);
    child.on("error", (err) => this.deliver(`error ${err.message}`));
    // its pipes must not keep the service's event loop alive
    (child.stdin as Socket | null)?.unref?.();
    (child.stdout as Socket | null)?.unref?.();
  }

  private exitNote(): string {
    const { exitCode, signalCode } = this.child;
    return exitCode !== null || signalCode !== null ? ` (exit ${exitCode ?? signalCode})` : "";
  }

  private deliver(line: string): void {
    const w = this.waiting;
    this.waiting = undefined;
    w?.(line);
  }

  get usable(): boolean {
    const c = this.child;
    return c.exitCode === null && c.signalCode === null && c.stdin?.writable === true;
  }

  /** Hands it the container in `dir`; resolves with its answer: "ok" or "error <message>". */
  hand(dir: string, settingsKey: string): Promise<string> {
    this.settingsKey = settingsKey;
    const answer = new Promise<string>((resolve) => {
      this.waiting = resolve;
    });
    this.child.stdin!.write(`${dir}\n`);
    return answer;
  }

  /** No more containers: it exits once idle (now, if it is). */
  release(): void {
    this.child.stdin?.end();
  }
}

/** For GET /metrics. */
export interface SupervisorStats {
  /** A fresh spare ready (0 or 1). */
  fresh: number;
  /** Reused supervisors idle. */
  idle: number;
  /** Containers handed to a supervisor that had served one before. */
  reused: number;
}

export class SpareSupervisor {
  private fresh?: PooledSupervisor;
  private readonly idle: PooledSupervisor[] = [];
  private readonly all = new Set<PooledSupervisor>();
  private timer?: NodeJS.Timeout;
  private stopped = false;
  /** Fresh spares that died idle in a row: after 3, no more (something is wrong with starting them). */
  private deaths = 0;
  private reused = 0;

  constructor(
    private readonly spawnSpare: () => ChildProcess,
    private readonly enabled: boolean,
  ) {}

  /** Starts a fresh spare after `delayMs` (none while one is ready). */
  schedule(delayMs = 0): void {
    if (!this.enabled || this.stopped || this.fresh || this.deaths >= 3) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.spawn(), delayMs);
    this.timer.unref();
  }

  private spawn(): void {
    if (this.stopped || this.fresh) return;
    const child = this.spawnSpare();
    const s = new PooledSupervisor(child, (idle) => this.becameIdle(idle));
    this.fresh = s;
    this.all.add(s);
    // it loads at a low priority (priority.ts); it sets itself back once handed a container
    if (child.pid) setProcessNice(SPARE_NICE, child.pid);
    child.on("exit", () => {
      this.all.delete(s);
      const i = this.idle.indexOf(s);
      if (i >= 0) this.idle.splice(i, 1);
      if (this.fresh !== s) return; // handed a container: a container's supervisor
      this.fresh = undefined;
      this.deaths++;
      this.schedule(1000);
    });
  }

  private becameIdle(s: PooledSupervisor): void {
    if (this.stopped || !this.enabled) {
      s.release();
      return;
    }
    this.idle.push(s);
    while (this.idle.length > MAX_IDLE) this.idle.shift()!.release();
  }

  /**
   * A supervisor for the container in `dir` (whose settings are `settingsKey`), handed it: a reused
   * one with the same settings, else the fresh spare; undefined when none is ready.
   */
  take(
    dir: string,
    settingsKey: string,
  ): { supervisor: PooledSupervisor; answer: Promise<string> } | undefined {
    let s: PooledSupervisor | undefined;
    for (let i = this.idle.length - 1; i >= 0 && !s; i--) {
      const candidate = this.idle[i]!;
      if (!candidate.usable) this.idle.splice(i, 1);
      else if (candidate.settingsKey === settingsKey) s = this.idle.splice(i, 1)[0];
    }
    if (!s && this.fresh) {
      const fresh = this.fresh;
      this.fresh = undefined;
      if (fresh.usable) s = fresh;
    }
    if (!s) {
      this.schedule(500);
      return undefined;
    }
    this.deaths = 0;
    if (s.settingsKey !== undefined) this.reused++;
    const answer = s.hand(dir, settingsKey);
    // Nothing ready for the next container: a fresh spare loads while this one starts (mostly
    // waiting on runc and mounts; at nice 10). A run right after this one finds this supervisor idle.
    if (this.idle.length === 0) this.schedule(0);
    return { supervisor: s, answer };
  }

  stats(): SupervisorStats {
    return { fresh: this.fresh?.usable ? 1 : 0, idle: this.idle.length, reused: this.reused };
  }

  /** No more containers handed: idle ones exit now, busy ones once their container ended. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    for (const s of this.all) s.release();
    this.fresh = undefined;
    this.idle.length = 0;
  }
}
