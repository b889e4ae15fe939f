import { Worker } from "node:worker_threads";
import { tempPathFor, writeFileAtomic } from "../util/atomic.js";

/**
 * The worker's code, inline (a separate module file would not survive bundling): each write is a
 * temp file and a rename, as writeFileAtomic does, done synchronously in the worker thread.
 */
const WORKER = `
const { parentPort } = require("node:worker_threads");
const { writeFileSync, renameSync, rmSync } = require("node:fs");
parentPort.on("message", ({ id, tmp, dest, data }) => {
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, dest);
    parentPort.postMessage({ id });
  } catch (err) {
    try { rmSync(tmp, { force: true }); } catch {}
    parentPort.postMessage({ id, code: err.code, message: err.message });
  }
});
`;

/** How long close() waits for writes still in the worker. */
const CLOSE_WAIT_MS = 5000;

/**
 * Atomic file writes (temp file + rename: a reader sees the whole file or none; a crash leaves only
 * a `.tmp-*-<pid>-*` file, which the stale-daemon cleanup removes) done in a worker thread. A pack
 * stream stores ~8 chunk files per MiB; through fs.promises each costs four thread-pool hand-offs
 * on the event loop that also answers FUSE reads (measured: ~0.2 ms of its CPU per chunk, more on a
 * busy host). Here the event loop only copies the bytes to the worker. If the worker cannot run,
 * writes fall back to writeFileAtomic.
 */
export class FileWriter {
  private worker?: Worker;
  private broken = false;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(): void; reject(err: Error): void }>();

  /** Writes `data` to `dest` atomically; rejects with the error's code kept (ENOSPC...). */
  write(dest: string, data: Uint8Array): Promise<void> {
    const worker = this.start();
    if (!worker) return writeFileAtomic(dest, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    const id = this.nextId++;
    // A copy of its own, moved to the worker: the caller keeps serving `data`.
    const copy = new Uint8Array(data);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ id, tmp: tempPathFor(dest), dest, data: copy }, [copy.buffer]);
    });
  }

  private start(): Worker | undefined {
    if (this.worker || this.broken) return this.worker;
    let worker: Worker;
    try {
      worker = new Worker(WORKER, { eval: true });
    } catch {
      this.broken = true;
      return undefined;
    }
    // Writes in flight do not keep a process alive; one that exits leaves temp files at most.
    worker.unref();
    worker.on("message", (m: { id: number; code?: string; message?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.message === undefined) p.resolve();
      else p.reject(Object.assign(new Error(m.message), { code: m.code }));
    });
    const fail = (err: Error) => {
      this.broken = true;
      this.worker = undefined;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    worker.on("error", fail);
    worker.on("exit", (code) => fail(new Error(`chunk writer thread exited (${code})`)));
    this.worker = worker;
    return worker;
  }

  /** Waits (bounded) for writes in flight, then stops the worker. */
  async close(): Promise<void> {
    const worker = this.worker;
    if (!worker) return;
    const deadline = Date.now() + CLOSE_WAIT_MS;
    while (this.pending.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    this.broken = true; // later writes (none expected) go the plain way
    this.worker = undefined;
    await worker.terminate();
  }
}
