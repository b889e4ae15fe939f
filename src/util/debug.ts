// Debug lines (`kindling --debug ...` or KINDLING_DEBUG=1): which source won, which mirror answered.
// The CLI switches them on; library code only calls debug().

let enabled = false;

export function setDebug(on: boolean): void {
  enabled = on;
}

export function debugEnabled(): boolean {
  return enabled;
}

/** Writes "kindling: debug: <message>" to stderr when debugging is on. */
export function debug(message: string | (() => string)): void {
  if (!enabled) return;
  process.stderr.write(`kindling: debug: ${typeof message === "function" ? message() : message}\n`);
}
