/**
 * A spare supervisor: a supervisor process the service starts ahead of time, idle with its modules
 * loaded, so a new container does not wait for Node to start and load them (bench/cli-cost.ts
 * measures the difference). The service hands it a container by writing the container's directory
 * to its stdin; a spare whose stdin closes without one (the service stopped or died) exits.
 */
import type { ChildProcess } from "node:child_process";
import { SPARE_NICE, setProcessNice } from "./priority.js";

export class SpareSupervisor {
  private child?: ChildProcess;
  private timer?: NodeJS.Timeout;
  private stopped = false;
  /** Spares that died idle in a row: after 3, no more (something is wrong with starting them). */
  private deaths = 0;

  constructor(
    private readonly spawnSpare: () => ChildProcess,
    private readonly enabled: boolean,
  ) {}

  /** Starts a spare after `delayMs`. */
  schedule(delayMs = 0): void {
    if (!this.enabled || this.stopped || this.child || this.deaths >= 3) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.spawn(), delayMs);
    this.timer.unref();
  }

  private spawn(): void {
    if (this.stopped || this.child) return;
    const child = this.spawnSpare();
    this.child = child;
    // it loads at a low priority (priority.ts); it sets itself back once handed a container
    if (child.pid) setProcessNice(SPARE_NICE, child.pid);
    child.stdin?.on("error", () => {});
    child.on("exit", () => {
      if (this.child !== child) return; // taken: it is a container's supervisor now
      this.child = undefined;
      this.deaths++;
      this.schedule(1000);
    });
  }

  /** The spare, now the supervisor of the container in `dir`; undefined when none is ready. */
  take(dir: string): ChildProcess | undefined {
    const child = this.child;
    this.child = undefined;
    if (!child) {
      this.schedule(500);
      return undefined;
    }
    const usable = child.exitCode === null && child.signalCode === null && child.stdin?.writable;
    if (!usable) {
      this.schedule(500);
      return undefined;
    }
    this.deaths = 0;
    child.stdin!.end(`${dir}\n`);
    // the next one loads while this container starts (mostly waiting on runc and mounts): a run
    // right after this one finds it ready (bench/cli-cost.ts: no-spare vs kindling)
    this.schedule(0);
    return child;
  }

  /** No more spares; the idle one exits (its stdin closes). */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.child?.stdin?.end();
    this.child = undefined;
  }
}
