/** An error meant for the user: its message names the problem; the CLI prints it without a stack. */
export class KindlingError extends Error {
  constructor(
    message: string,
    readonly code = "EKINDLING",
  ) {
    super(message);
    this.name = "KindlingError";
  }
}

/** Exit status used when Kindling itself fails (as docker/podman do), apart from the container's own status. */
export const EXIT_KINDLING_FAILURE = 125;

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** What the CLI prints for a failure: one line, printable, naming the problem (a stack only if asked). */
export function userMessage(err: unknown, withStack = false): string {
  let text: string;
  if (err instanceof KindlingError) text = err.message;
  else if (isErrnoError(err)) text = errnoMessage(err);
  else {
    const e = err instanceof Error ? err : new Error(String(err));
    // A bug of ours, not the user's input: say so briefly; the stack is for --debug.
    text = `internal error: ${e.name}: ${e.message}${withStack ? "" : " (--debug prints the stack)"}`;
  }
  const line = oneLine(text);
  return withStack && err instanceof Error && err.stack ? `${line}\n${err.stack}` : line;
}

function isErrnoError(err: unknown): err is NodeJS.ErrnoException {
  return (
    err instanceof Error &&
    typeof (err as NodeJS.ErrnoException).code === "string" &&
    /^E[A-Z0-9]+$/.test((err as NodeJS.ErrnoException).code!) &&
    "syscall" in err
  );
}

const ERRNO_TEXT: Record<string, string> = {
  ENOSPC: "no space left on device (the file system is full)",
  EDQUOT: "disk quota exceeded",
  EROFS: "read-only file system",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  ENOENT: "no such file or directory",
  ENOTDIR: "not a directory",
  EISDIR: "is a directory",
  EEXIST: "already exists",
  EIO: "input/output error",
  EMFILE: "too many open files",
};

/** "mkdir /home/run/x: no space left on device (the file system is full)" from a Node system error. */
function errnoMessage(err: NodeJS.ErrnoException): string {
  const what = ERRNO_TEXT[err.code!] ?? err.message.replace(/^E[A-Z0-9]+: /, "").replace(/, .*$/, "");
  const where = [err.path, (err as { dest?: string }).dest].filter(Boolean).join(" -> ");
  return `${err.syscall}${where ? ` ${where}` : ""}: ${what}`;
}

/**
 * One printable line: line breaks (e.g. a tool's stderr) become "; ", and control characters or
 * bytes that were not text become \xNN escapes, so a binary file's bytes never reach the terminal.
 */
export function oneLine(text: string): string {
  return (
    text
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter(Boolean)
      .join("; ")
      // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
      .replace(/[\u0000-\u001f\u007f-\u009f\ufffd]/g, (c) =>
        c === "\ufffd" ? "\\ufffd" : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
      )
  );
}
