/**
 * QEMU's monitor protocol (QMP) over its Unix socket: one connection, commands answered in order.
 * Events are skipped. Every command has a deadline: a QEMU that stops answering fails the caller.
 */
import net from "node:net";

export class QmpError extends Error {}

export class QmpConnection {
  private buf = "";
  private readonly waiting: { resolve: (v: unknown) => void; reject: (e: Error) => void }[] = [];
  private greeted!: Promise<void>;
  private failure?: Error;

  private constructor(private readonly sock: net.Socket) {}

  /** Connects and negotiates capabilities. */
  static async open(socketPath: string, timeoutMs = 5000): Promise<QmpConnection> {
    const sock = net.connect(socketPath);
    const conn = new QmpConnection(sock);
    conn.greeted = new Promise<void>((resolve, reject) => {
      conn.waiting.push({ resolve: () => resolve(), reject });
    });
    sock.on("data", (d) => conn.onData(d.toString()));
    sock.on("error", (e) => conn.fail(new QmpError(`QMP: ${e.message}`)));
    sock.on("close", () => conn.fail(new QmpError("QMP connection closed")));
    await withDeadline(conn.greeted, timeoutMs, "QMP greeting");
    await conn.execute("qmp_capabilities", undefined, timeoutMs);
    return conn;
  }

  /** One command; resolves with its "return", rejects with its error's description. */
  execute(command: string, args?: Record<string, unknown>, timeoutMs = 5000): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure);
    const answer = new Promise<unknown>((resolve, reject) => this.waiting.push({ resolve, reject }));
    this.sock.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) })}\n`);
    return withDeadline(answer, timeoutMs, `QMP ${command}`);
  }

  close(): void {
    this.sock.destroy();
  }

  private onData(text: string): void {
    this.buf += text;
    for (let nl = this.buf.indexOf("\n"); nl >= 0; nl = this.buf.indexOf("\n")) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      let msg: { QMP?: unknown; event?: string; return?: unknown; error?: { desc?: string } };
      try {
        msg = JSON.parse(line);
      } catch {
        this.fail(new QmpError(`QMP: not JSON: ${line.slice(0, 80)}`));
        return;
      }
      if (msg.event) continue;
      const w = this.waiting.shift();
      if (!w) continue;
      if (msg.error) w.reject(new QmpError(msg.error.desc ?? "QMP error"));
      else w.resolve(msg.return);
    }
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const w of this.waiting.splice(0)) w.reject(err);
  }
}

function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new QmpError(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}
