import path from "node:path";
import type { Kindling } from "../client/index.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";

/** The service's socket: $KINDLING_SOCKET, else <home>/kindling.sock. */
export function serviceSocket(home: KindlingHome): string {
  return process.env.KINDLING_SOCKET || path.join(home.root, "kindling.sock");
}

/** A client of this home's service, which it starts when none answers. */
export async function cliClient(): Promise<Kindling> {
  const { Kindling } = await import("../client/index.js");
  const { KindlingHome } = await import("../util/home.js");
  const home = new KindlingHome();
  return new Kindling({ home: home.root, socket: serviceSocket(home), autoStart: true });
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
