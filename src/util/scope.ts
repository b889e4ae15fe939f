import { errorMessage } from "./errors.js";
import { trace } from "./trace.js";

type Undo = () => void | Promise<void>;

/**
 * An owner for resources: each acquired resource registers how to release it; close() releases
 * them in reverse order, on success, failure, timeout or signal alike. Errors while releasing are
 * reported but do not stop the remaining releases.
 */
export class Scope {
  private readonly steps: { name: string; undo: Undo }[] = [];
  private closed = false;

  defer(name: string, undo: Undo): void {
    if (this.closed) throw new Error(`scope already closed; cannot register ${name}`);
    this.steps.push({ name, undo });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const live = activeScopes;
    live.delete(this);
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await step.undo();
        trace(`released ${step.name}`);
      } catch (err) {
        process.stderr.write(`kindling: cleanup of ${step.name} failed: ${errorMessage(err)}\n`);
      }
    }
  }

  /** Runs fn with a scope that is always closed afterwards. */
  static async with<T>(fn: (scope: Scope) => Promise<T>): Promise<T> {
    const scope = new Scope();
    activeScopes.add(scope);
    try {
      return await fn(scope);
    } finally {
      await scope.close();
    }
  }
}

const activeScopes = new Set<Scope>();

/** Closes every open scope (used on SIGINT/SIGTERM before exiting). */
export async function closeAllScopes(): Promise<void> {
  for (const scope of [...activeScopes].reverse()) await scope.close();
}
