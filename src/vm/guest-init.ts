// The guest's init binary ships prebuilt in the npm package (guest/build/kindling-init) with its
// sha256 beside it (kindling-init.sha256, written by guest/Makefile): it is checked before use, so a
// truncated or altered binary is an error naming the file, not a guest that fails to boot.
import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { KindlingError } from "../util/errors.js";

/** The checksum file of an init binary. */
export const checksumFile = (init: string) => `${init}.sha256`;

/** Binaries verified in this process, by path, size and mtime: hashing costs tens of ms per boot under load. */
const verifiedOnce = new Map<string, { key: string; sha256: string; verified: boolean }>();

/** The binary's bytes, verified against its .sha256 when there is one (a development build may lack it). */
export async function readGuestInit(
  init: string,
): Promise<{ bytes: Buffer; sha256: string; verified: boolean }> {
  const missing = (): never => {
    throw new KindlingError(`guest init ${init} is missing: run \`npm run build\` (make -C guest)`);
  };
  const st = await stat(init).catch(missing);
  const key = `${st.size}:${st.mtimeMs}`;
  const bytes = await readFile(init).catch(missing);
  const known = verifiedOnce.get(init);
  if (known?.key === key) return { bytes, sha256: known.sha256, verified: known.verified };
  const result = await verify(init, bytes);
  verifiedOnce.set(init, { key, ...result });
  return { bytes, ...result };
}

async function verify(init: string, bytes: Buffer): Promise<{ sha256: string; verified: boolean }> {
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  let expected: string | undefined;
  try {
    expected = (await readFile(checksumFile(init), "utf8")).trim().split(/\s+/)[0];
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    return { sha256, verified: false };
  }
  if (expected !== sha256) {
    throw new KindlingError(
      `guest init ${init} has sha256 ${sha256}, not ${expected} as ${checksumFile(init)} says: rebuild it (make -C guest) or reinstall Kindling`,
    );
  }
  return { sha256, verified: true };
}
