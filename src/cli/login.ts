import type { Command } from "commander";
import { read } from "read";
import { loginRegistry, logout, storeLogin, verifyLogin } from "../registry/login.js";
import { registrySettings } from "../registry/settings.js";
import { KindlingError } from "../util/errors.js";

interface LoginOpts {
  username?: string;
  passwordStdin?: boolean;
  containers?: boolean;
  authfile?: string;
  insecure?: boolean;
}

export function registerLoginCommands(program: Command): void {
  program
    .command("login")
    .description("check credentials against a registry and store them where docker (or podman) keeps them")
    .argument("[registry]", "host[:port] (default: Docker Hub)")
    .option("-u, --username <user>", "user name (asked for when on a terminal)")
    .option("--password-stdin", "read the password from stdin (it is never accepted as an argument)")
    .option(
      "--containers",
      "store in the containers tools' auth file (REGISTRY_AUTH_FILE or $XDG_RUNTIME_DIR/containers/auth.json)",
    )
    .option("--authfile <file>", "store in this auth file")
    .option("--insecure", "plain HTTP (registries.conf can say so instead)")
    .action(async (input: string | undefined, opts: LoginOpts) => {
      const registry = loginRegistry(input);
      const settings = registrySettings();
      const { username, password } = await askCredentials(opts);
      await verifyLogin(registry, { username, password }, settings, Boolean(opts.insecure));
      const where = await storeLogin(registry, { username, password }, settings, choice(opts));
      process.stdout.write(`Login Succeeded (credentials for ${registry} stored in ${where})\n`);
    });

  program
    .command("logout")
    .description("remove the credentials `kindling login` stored for a registry")
    .argument("[registry]", "host[:port] (default: Docker Hub)")
    .option("--containers", "remove from the containers tools' auth file")
    .option("--authfile <file>", "remove from this auth file")
    .action(async (input: string | undefined, opts: LoginOpts) => {
      const registry = loginRegistry(input);
      const removed = await logout(registry, registrySettings(), choice(opts));
      process.stdout.write(
        removed.length > 0
          ? `Removed login credentials for ${registry} from ${removed.join(" and ")}\n`
          : `Not logged in to ${registry}\n`,
      );
    });
}

function choice(opts: LoginOpts) {
  return { containers: opts.containers, authFile: opts.authfile };
}

/** The user from -u or a prompt; the password from stdin or a prompt that does not echo. */
async function askCredentials(opts: LoginOpts): Promise<{ username: string; password: string }> {
  const tty = Boolean(process.stdin.isTTY);
  if (opts.passwordStdin) {
    if (!opts.username) throw new KindlingError("--password-stdin needs the user name: give it with -u");
    const password = (await readStdin()).replace(/\r?\n$/, "");
    if (!password) throw new KindlingError("no password on stdin");
    return { username: opts.username, password };
  }
  if (!tty) {
    throw new KindlingError(
      "no terminal to ask for the password: pipe it in with --password-stdin (and -u USER)",
    );
  }
  const username = opts.username ?? (await read({ prompt: "Username: ", output: process.stderr })).trim();
  if (!username) throw new KindlingError("a user name is required");
  const password = await read({ prompt: "Password: ", silent: true, replace: "", output: process.stderr });
  if (!password) throw new KindlingError("a password is required");
  return { username, password };
}

async function readStdin(): Promise<string> {
  const parts: Buffer[] = [];
  for await (const chunk of process.stdin) parts.push(chunk as Buffer);
  return Buffer.concat(parts).toString("utf8");
}
