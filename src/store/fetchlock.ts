import { open, readFile, rm, stat } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { isSameProcess, processStartTime } from "../host/process.js";

/**
 * One fetch per chunk across processes: several containers (each with its own daemon) of an image
 * started together would otherwise all fetch the same chunks from the registry. The daemon that
 * fetches holds `blobs/.fetch-<hex>` (pid and start time inside, so a dead holder is noticed);
 * the others wait for the blob to appear.
 */
export class FetchLocks {
  private me: string | undefined;

  /** Takes the lock; false if another live daemon holds it (a dead holder's lock is taken over). */
  async tryLock(lock: string): Promise<boolean> {
    this.me ??= `${process.pid} ${processStartTime(process.pid) ?? ""}`;
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fh = await open(lock, "wx");
        try {
          await fh.writeFile(this.me);
        } catch (err) {
          // An empty lock would look like a holder still starting: take it away (full disk).
          await rm(lock, { force: true });
          throw err;
        } finally {
          await fh.close();
        }
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
        if (await this.holderLives(lock)) return false;
        await rm(lock, { force: true });
      }
    }
    return false;
  }

  /** Whether the lock exists and its holder runs. */
  async holderLives(lock: string): Promise<boolean> {
    let text: string;
    try {
      text = await readFile(lock, "utf8");
    } catch {
      return false;
    }
    const [pid, start] = text.split(" ");
    // Written but not yet filled in by its holder: treat as live for now.
    if (!pid) return true;
    return isSameProcess(Number(pid), Number(start) || undefined);
  }

  /**
   * Waits while a live peer holds the lock: returns true when it let go (its copy, if it got one,
   * is in place by then: it renames before it unlocks), false at `until`.
   */
  async waitForPeer(lock: string, until: number): Promise<boolean> {
    for (let i = 1; Date.now() < until; i++) {
      await sleep(20);
      if (!(await stat(lock).catch(() => null))) return true;
      // Checking the holder costs more than a stat: every 10th round.
      if (i % 10 === 0 && !(await this.holderLives(lock))) return true;
    }
    return false;
  }
}
