/** Lock files that name their holder (pid and start time), so a dead holder's lock can be taken over. */
import { open, readFile, stat, unlink } from "node:fs/promises";
import { isSameProcess, processStartTime } from "./process.js";

/** A lock file that is still empty this long after it was made: its maker died between open and write. */
const EMPTY_LOCK_STALE_MS = 10_000;

/**
 * Takes a lock file naming this process (pid and start time); false if a live process holds it. A lock
 * whose process is gone is taken over.
 */
export async function takePidLock(file: string): Promise<boolean> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(file, "wx");
      await fh.writeFile(`${process.pid} ${processStartTime(process.pid) ?? 0}\n`);
      await fh.close();
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const [pid, start] = (await readFile(file, "utf8").catch(() => "")).trim().split(" ").map(Number);
      if (pid! > 0 && isSameProcess(pid!, start)) return false;
      if (!(pid! > 0)) {
        // no pid yet: its maker may be writing it now
        const age = Date.now() - ((await stat(file).catch(() => undefined))?.mtimeMs ?? 0);
        if (age < EMPTY_LOCK_STALE_MS) return false;
      }
      await unlink(file).catch(() => {});
    }
  }
  return false;
}
