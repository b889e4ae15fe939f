import type { ChunkSource, Digest } from "../store/types.js";
import type { DaemonMessage, ParentMessage } from "./types.js";

/** In the daemon: a source whose fetches are served by the parent process over IPC. */
export class IpcChunkSource implements ChunkSource {
  readonly description: string;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(b: Buffer): void; reject(e: Error): void }>();

  constructor(description: string) {
    this.description = description;
    process.on("message", (m: ParentMessage) => {
      if (m.t !== "chunk" && m.t !== "error") return;
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.t === "chunk") p.resolve(Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength));
      else p.reject(new Error(m.message));
    });
    process.on("disconnect", () => {
      for (const p of this.pending.values()) p.reject(new Error("the owning process is gone"));
      this.pending.clear();
    });
  }

  fetch(digest: Digest, length: number, signal?: AbortSignal): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      if (!process.connected) return reject(new Error("the owning process is gone"));
      const id = this.nextId++;
      this.pending.set(id, { resolve, reject });
      signal?.addEventListener(
        "abort",
        () => {
          if (!this.pending.delete(id)) return;
          send({ t: "abort", id });
          reject(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
        },
        { once: true },
      );
      send({ t: "fetch", id, digest, length });
    });
  }
}

export function send(m: DaemonMessage): void {
  if (process.connected) process.send?.(m);
}
