import type { Kindling } from "../client/index.js";
import { config } from "../config/index.js";
import { KindlingError } from "../util/errors.js";

/** A client of this home's service, which it starts when none answers. */
export async function cliClient(): Promise<Kindling> {
  const { Kindling } = await import("../client/index.js");
  const cfg = config();
  return new Kindling({ home: cfg.home, socket: cfg.socket, autoStart: true });
}

/** Runs a client call; an API error becomes a one-line KindlingError (exit 125). */
export async function api<T>(call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (err) {
    const e = err as Error & { code?: string };
    if (e.name === "KindlingApiError") throw new KindlingError(e.message, e.code);
    throw err;
  }
}

/** A client of this home's service if one answers (none is started). */
export async function runningService(): Promise<Kindling | undefined> {
  const { Kindling } = await import("../client/index.js");
  const cfg = config();
  const k = new Kindling({ home: cfg.home, socket: cfg.socket });
  return (await k.ping()) ? k : undefined;
}
