/**
 * The value types a setting may have: each turns the raw text of an environment variable (or a
 * flag) into a typed value, or says in a few words what it expected.
 */

/** Parses one raw value; returns the value, or `{ expected }` saying what a valid one looks like. */
export interface ValueType<T> {
  /** Short name shown in docs and errors, e.g. "milliseconds". */
  readonly name: string;
  /** How an error calls a bad value: "unknown" for a word not in a list, else "invalid". */
  readonly bad?: "unknown" | "invalid";
  parse(raw: string): T | { expected: string };
}

const invalid = (expected: string) => ({ expected });

export function isInvalid<T>(v: T | { expected: string }): v is { expected: string } {
  return typeof v === "object" && v !== null && "expected" in v && Object.keys(v).length === 1;
}

/** A whole number in [min, max]; accepts only digits (no "1e3", no "0x10", no sign). */
export function integer(name: string, min: number, max = Number.MAX_SAFE_INTEGER): ValueType<number> {
  const expected =
    max === Number.MAX_SAFE_INTEGER ? `a whole number >= ${min}` : `a whole number ${min}..${max}`;
  return {
    name,
    parse: (raw) => {
      if (!/^\d+$/.test(raw)) return invalid(expected);
      const n = Number(raw);
      return n >= min && n <= max ? n : invalid(expected);
    },
  };
}

/** Milliseconds, above 0 (a timeout of 0 would fail everything at once). */
export const milliseconds = integer("milliseconds", 1);
/** A count that may be 0 (retries). */
export const count = integer("count", 0);
/** A size in bytes, above 0. */
export const bytes = integer("bytes", 1);

/** `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`, any case. */
export const boolean: ValueType<boolean> = {
  name: "boolean",
  parse: (raw) => {
    const v = raw.toLowerCase();
    if (["1", "true", "yes", "on"].includes(v)) return true;
    if (["0", "false", "no", "off"].includes(v)) return false;
    return invalid("1 or 0 (true/false)");
  },
};

/** Free text without NUL bytes (a binary's name or path, a file path). */
export const text: ValueType<string> = {
  name: "text",
  parse: (raw) => (raw.includes("\0") ? invalid("text without NUL bytes") : raw),
};

/** One of a fixed list of words. */
export function oneOf<const W extends string>(words: readonly W[]): ValueType<W> {
  return {
    name: words.join(" | "),
    bad: "unknown",
    parse: (raw) =>
      (words as readonly string[]).includes(raw) ? (raw as W) : invalid(`one of: ${words.join(", ")}`),
  };
}

/** Text matching `pattern` (a small grammar, e.g. `zstd:3`); `expected` says what a valid one looks like. */
export function matching(name: string, pattern: RegExp, expected: string): ValueType<string> {
  return { name, parse: (raw) => (pattern.test(raw) ? raw : invalid(expected)) };
}
