// The docker-credential-helpers protocol: `docker-credential-NAME get|store|erase`, the server on
// stdin (JSON for store), JSON on stdout. https://github.com/docker/docker-credential-helpers
import { spawn } from "node:child_process";
import { hostEnv } from "../config/index.js";
import { KindlingError } from "../util/errors.js";

export interface HelperCredentials {
  username: string;
  secret: string;
}

/** The message helpers print when they hold nothing for the server (exit status 1). */
const NOT_FOUND = /credentials not found/i;
const TIMEOUT_MS = 30_000;

/** `get`: the helper's credentials for `serverUrl`, or undefined when it has none. */
export async function helperGet(helper: string, serverUrl: string): Promise<HelperCredentials | undefined> {
  const { code, stdout, stderr } = await runHelper(helper, "get", serverUrl);
  if (code !== 0) {
    if (NOT_FOUND.test(stdout) || NOT_FOUND.test(stderr)) return undefined;
    throw helperError(helper, "get", code, stdout, stderr);
  }
  let body: { Username?: unknown; Secret?: unknown };
  try {
    body = JSON.parse(stdout) as typeof body;
  } catch {
    throw new KindlingError(`credential helper docker-credential-${helper} get: output is not JSON`);
  }
  if (typeof body.Secret !== "string" || body.Secret === "") return undefined;
  return { username: typeof body.Username === "string" ? body.Username : "", secret: body.Secret };
}

export async function helperStore(
  helper: string,
  serverUrl: string,
  creds: HelperCredentials,
): Promise<void> {
  const input = JSON.stringify({ ServerURL: serverUrl, Username: creds.username, Secret: creds.secret });
  const { code, stdout, stderr } = await runHelper(helper, "store", input);
  if (code !== 0) throw helperError(helper, "store", code, stdout, stderr);
}

/** `erase`: false when the helper had nothing for the server. */
export async function helperErase(helper: string, serverUrl: string): Promise<boolean> {
  const { code, stdout, stderr } = await runHelper(helper, "erase", serverUrl);
  if (code === 0) return true;
  if (NOT_FOUND.test(stdout) || NOT_FOUND.test(stderr)) return false;
  throw helperError(helper, "erase", code, stdout, stderr);
}

/** One line naming the helper, the action and its own words (never the input: it may hold a secret). */
function helperError(helper: string, action: string, code: number, stdout: string, stderr: string) {
  // Helpers say why in one line; a crashing one prints a trace: keep its line that names the error.
  const lines = (stderr.trim() || stdout.trim())
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
  const said = lines.find((l) => /error/i.test(l)) ?? lines.at(-1) ?? "";
  return new KindlingError(
    `credential helper docker-credential-${helper} ${action} failed (status ${code})${said ? `: ${said.slice(0, 300)}` : ""}`,
  );
}

function runHelper(
  helper: string,
  action: string,
  input: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  if (!/^[\w.-]+$/.test(helper)) {
    return Promise.reject(new KindlingError(`credential helper name "${helper}" is not valid`));
  }
  const cmd = `docker-credential-${helper}`;
  return new Promise((resolve, reject) => {
    // Helpers run with the user's environment (PATH, D-Bus session, pass's GNUPGHOME...).
    const child = spawn(cmd, [action], {
      stdio: ["pipe", "pipe", "pipe"],
      timeout: TIMEOUT_MS,
      env: hostEnv(),
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    child.on("error", (e: NodeJS.ErrnoException) =>
      reject(
        new KindlingError(
          e.code === "ENOENT"
            ? `credential helper ${cmd} is not installed (named by the docker config); install it or remove it from the config`
            : `credential helper ${cmd}: ${e.message}`,
        ),
      ),
    );
    child.on("close", (code, signal) => {
      if (signal) {
        const why = signal === "SIGTERM" ? `no answer within ${TIMEOUT_MS / 1000} s` : `killed by ${signal}`;
        reject(new KindlingError(`credential helper ${cmd} ${action}: ${why}`));
        return;
      }
      resolve({
        code: code ?? 1,
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
      });
    });
    child.stdin.on("error", () => {});
    child.stdin.end(input);
  });
}
