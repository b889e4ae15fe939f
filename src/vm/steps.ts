/**
 * A boot as a list of named steps, in the style of firecracker-go-sdk's handler lists (handlers.go):
 * a backend defines its default list, and a variant (the jailer, a config file instead of API calls)
 * is an adaptation of the list (swap, insert, remove a named step) instead of flags threaded through
 * one long function. Each step registers the undo of what it acquired in the scope.
 */
import type { Scope } from "../util/scope.js";

export interface Step<C> {
  readonly name: string;
  run(ctx: C, scope: Scope): Promise<void> | void;
}

export class StepList<C> {
  private constructor(private readonly steps: readonly Step<C>[]) {}

  static of<C>(...steps: Step<C>[]): StepList<C> {
    return new StepList(steps);
  }

  get names(): string[] {
    return this.steps.map((s) => s.name);
  }

  has(name: string): boolean {
    return this.steps.some((s) => s.name === name);
  }

  /** The step of that name (an adaptation that wraps it). */
  step(name: string): Step<C> {
    this.mustHave(name);
    return this.steps.find((s) => s.name === name)!;
  }

  /** Replaces the step of the same name. */
  swap(step: Step<C>): StepList<C> {
    this.mustHave(step.name);
    return new StepList(this.steps.map((s) => (s.name === step.name ? step : s)));
  }

  /** Inserts `step` right after the step named `after`. */
  insertAfter(after: string, step: Step<C>): StepList<C> {
    this.mustHave(after);
    return new StepList(this.steps.flatMap((s) => (s.name === after ? [s, step] : [s])));
  }

  /** Inserts `step` right before the step named `before`. */
  insertBefore(before: string, step: Step<C>): StepList<C> {
    this.mustHave(before);
    return new StepList(this.steps.flatMap((s) => (s.name === before ? [step, s] : [s])));
  }

  remove(name: string): StepList<C> {
    this.mustHave(name);
    return new StepList(this.steps.filter((s) => s.name !== name));
  }

  /** Runs the steps in order; the first failure stops the list (the caller closes the scope). */
  async run(ctx: C, scope: Scope): Promise<void> {
    for (const step of this.steps) await step.run(ctx, scope);
  }

  private mustHave(name: string): void {
    // an adaptation written against another list is a programming error, not a user's
    if (!this.has(name)) throw new Error(`no boot step named ${name} (have: ${this.names.join(", ")})`);
  }
}
