/**
 * A container's output log: one JSON line per chunk the process wrote,
 *   {"t": <ms since epoch>, "s": "stdout"|"stderr", "b": "<base64 bytes>"}
 * Base64 keeps every byte (binary output too); a line is appended whole, so a reader that meets a
 * line without its newline (a write in progress, or a supervisor killed mid-write) stops before it.
 */
import { createWriteStream, type WriteStream, watch } from "node:fs";
import { open } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";

export type LogStream = "stdout" | "stderr";

export interface LogEntry {
  time: number;
  stream: LogStream;
  data: Buffer;
}

/** Appends entries to a log file. */
export class LogWriter {
  private readonly out: WriteStream;
  private firstAt?: number;

  constructor(file: string) {
    this.out = createWriteStream(file, { flags: "a" });
    this.out.on("error", () => {}); // a full disk must not kill the supervisor (and its container)
  }

  /** When the first byte was written (ms since epoch), if any. */
  get firstWriteAt(): number | undefined {
    return this.firstAt;
  }

  write(stream: LogStream, data: Buffer): void {
    if (data.length === 0) return;
    const t = Date.now();
    this.firstAt ??= t;
    this.out.write(`${JSON.stringify({ t, s: stream, b: data.toString("base64") })}\n`);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.out.end(resolve));
  }
}

function parseLine(line: string): LogEntry | undefined {
  try {
    const e = JSON.parse(line) as { t: number; s: LogStream; b: string };
    return { time: e.t, stream: e.s, data: Buffer.from(e.b, "base64") };
  } catch {
    return undefined;
  }
}

export interface ReadLogOptions {
  /** Keep reading as the log grows until `done()` says the writer has finished. */
  follow?: boolean;
  /** With follow: true once nothing more will be written (the container ended). */
  done?: () => Promise<boolean>;
  /** Stop following when this signal aborts (the client went away). */
  signal?: AbortSignal;
  /** Only the last N entries of what is there now (then follow). */
  tail?: number;
}

/** The log's entries from the start (or the last `tail`), then, with follow, new ones as they come. */
export async function* readLog(file: string, opts: ReadLogOptions = {}): AsyncGenerator<LogEntry> {
  const fh = await open(file, "r").catch(() => undefined);
  if (!fh) return;
  let wake: (() => void) | undefined;
  const watcher = opts.follow
    ? (() => {
        try {
          return watch(file, () => wake?.());
        } catch {
          return undefined;
        }
      })()
    : undefined;
  try {
    let offset = 0;
    let pending = "";
    let first = true;
    const buf = Buffer.alloc(1 << 16);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, offset);
      if (bytesRead > 0) {
        offset += bytesRead;
        pending += buf.subarray(0, bytesRead).toString("utf8");
        continue; // read all that is there before yielding (tail needs the whole set)
      }
      const lines = pending.split("\n");
      pending = lines.pop() ?? ""; // an incomplete last line waits for its newline
      let entries = lines.filter(Boolean);
      if (first && opts.tail !== undefined) entries = entries.slice(Math.max(0, entries.length - opts.tail));
      first = false;
      for (const line of entries) {
        const e = parseLine(line);
        if (e) yield e;
      }
      if (!opts.follow || opts.signal?.aborted) return;
      // Finished only if the writer was done before this read found nothing more.
      if (opts.done && (await opts.done())) {
        const { bytesRead: more } = await fh.read(buf, 0, 1, offset);
        if (more === 0) return;
        continue;
      }
      await new Promise<void>((resolve) => {
        wake = resolve;
        const onAbort = () => resolve();
        opts.signal?.addEventListener("abort", onAbort, { once: true });
        // fs.watch may miss events (some filesystems): poll too.
        void sleep(250).then(resolve);
      });
      wake = undefined;
    }
  } finally {
    watcher?.close();
    await fh.close();
  }
}
