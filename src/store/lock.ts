import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { isSameProcess } from "../host/process.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";

/**
 * Runs fn holding the store lock ($KINDLING_HOME/store.lock, a directory: mkdir is atomic). Held only
 * for short critical sections: committing an image (its chunks are present, then its record) and
 * garbage collection, so a collection never deletes chunks an import is about to reference.
 * A lock left by a dead process is taken over.
 */
export async function withStoreLock<T>(
  home: KindlingHome,
  fn: () => Promise<T>,
  timeoutMs = 600_000,
): Promise<T> {
  const dir = path.join(home.root, "store.lock");
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await mkdir(dir);
      await writeFile(path.join(dir, "owner"), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const owner = Number.parseInt(await readFile(path.join(dir, "owner"), "utf8").catch(() => ""), 10);
      if (Number.isFinite(owner) && !isSameProcess(owner)) {
        // Stale: move it aside atomically so only one waiter takes it over.
        const aside = `${dir}.stale-${process.pid}`;
        await rename(dir, aside).then(
          () => rm(aside, { recursive: true, force: true }),
          () => {},
        );
        continue;
      }
      if (Date.now() > deadline) throw new KindlingError(`timed out waiting for the store lock ${dir}`);
      await sleep(20 + Math.random() * 30);
    }
  }
  try {
    return await fn();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
