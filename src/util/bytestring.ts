import { readFileSync } from "node:fs";

/**
 * Arguments and environment values are byte strings on Linux, not necessarily UTF-8. Node decodes
 * argv as UTF-8 and turns each invalid byte into U+FFFD, losing it. To carry such bytes through
 * strings unchanged we use Python's "surrogateescape" convention: a byte 0x80-0xFF that is not part
 * of valid UTF-8 becomes the lone surrogate U+DC80-U+DCFF (which valid UTF-8 text never holds), and
 * encoding turns it back into that byte. Only the boundaries decode/encode: argv in the CLI, the
 * agent protocol towards the guest. runc gets config.json, which must be UTF-8 JSON: runc (Go's
 * encoding/json) reads a lone-surrogate escape, like a raw invalid byte, as U+FFFD, so under runc
 * such a byte arrives as U+FFFD, exactly as runc does with any config.json that holds it.
 */

const LONE_ESCAPE = /(?<![\uD800-\uDBFF])[\uDC80-\uDCFF]/g;

/** Bytes -> string, valid UTF-8 decoded, every other byte escaped as U+DC80+byte. */
export function decodeBytes(b: Buffer): string {
  let out = "";
  let i = 0;
  while (i < b.length) {
    const n = validSequenceLength(b, i);
    if (n > 0) {
      out += b.toString("utf8", i, i + n);
      i += n;
    } else {
      out += String.fromCharCode(0xdc00 + b[i]!);
      i++;
    }
  }
  return out;
}

/** String -> bytes: UTF-8, with escaped bytes (lone U+DC80-U+DCFF) written back as themselves. */
export function encodeBytes(s: string): Buffer {
  if (!LONE_ESCAPE.test(s)) return Buffer.from(s, "utf8");
  LONE_ESCAPE.lastIndex = 0;
  const parts: Buffer[] = [];
  let last = 0;
  for (const m of s.matchAll(LONE_ESCAPE)) {
    parts.push(Buffer.from(s.slice(last, m.index), "utf8"), Buffer.from([m[0].charCodeAt(0) - 0xdc00]));
    last = m.index! + 1;
  }
  parts.push(Buffer.from(s.slice(last), "utf8"));
  return Buffer.concat(parts);
}

/** Length of the valid UTF-8 sequence at b[i] (1-4), or 0 if the byte there does not start one. */
function validSequenceLength(b: Buffer, i: number): number {
  const c = b[i]!;
  if (c < 0x80) return 1;
  let n: number;
  let lo = 0x80;
  let hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) n = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c === 0xe0) lo = 0xa0; // no overlong forms
    if (c === 0xed) hi = 0x9f; // no UTF-16 surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c === 0xf0) lo = 0x90;
    if (c === 0xf4) hi = 0x8f; // nothing above U+10FFFF
  } else return 0;
  if (i + n > b.length) return 0;
  if (b[i + 1]! < lo || b[i + 1]! > hi) return 0;
  for (let k = 2; k < n; k++) if (b[i + k]! < 0x80 || b[i + k]! > 0xbf) return 0;
  return n;
}

/**
 * process.argv with the bytes Node lost: the raw arguments from /proc/self/cmdline, decoded as
 * above. cmdline also holds node's own options (execArgv), so the user's arguments are its last
 * argv.length - 2 entries; they are used only if each one, decoded the way Node does, equals
 * process.argv's: otherwise (no /proc, an argv rewritten by a wrapper) process.argv stays as it is.
 */
export function rawArgv(argv: string[] = process.argv, cmdlineFile = "/proc/self/cmdline"): string[] {
  let raw: Buffer[];
  try {
    const all = readFileSync(cmdlineFile);
    raw = split0(all);
  } catch {
    return argv;
  }
  const user = argv.length - 2;
  if (user <= 0 || raw.length < user) return argv;
  const tail = raw.slice(raw.length - user);
  if (!tail.every((b, i) => b.toString("utf8") === argv[i + 2])) return argv;
  return [argv[0]!, argv[1]!, ...tail.map(decodeBytes)];
}

function split0(all: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < all.length; i++) {
    if (all[i] === 0) {
      out.push(all.subarray(start, i));
      start = i + 1;
    }
  }
  if (start < all.length) out.push(all.subarray(start));
  return out;
}
