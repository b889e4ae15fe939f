/** The service's event stream (GET /v1/events) and its structured log (JSON lines on stdout). */
import type { ServiceEvent } from "./api.js";

export type LogFn = (level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;

/** One JSON object per line: {"time", "level", "msg", ...fields}; a closed stdout is not fatal. */
export function jsonLogger(out: NodeJS.WritableStream = process.stdout): LogFn {
  out.on("error", () => {});
  return (level, msg, fields = {}) => {
    out.write(`${JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields })}\n`);
  };
}

export class EventBus {
  private readonly listeners = new Set<(e: ServiceEvent) => void>();

  constructor(private readonly log: LogFn) {}

  emit(e: Omit<ServiceEvent, "time">): void {
    const event: ServiceEvent = { time: new Date().toISOString(), ...e };
    this.log("info", `${e.type} ${e.action}`, {
      event: `${e.type}.${e.action}`,
      id: e.id,
      ...(e.name ? { name: e.name } : {}),
      ...(e.attributes ?? {}),
    });
    for (const l of this.listeners) l(event);
  }

  subscribe(listener: (e: ServiceEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
