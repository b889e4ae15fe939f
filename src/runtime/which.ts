import { constants } from "node:fs";
import { access } from "node:fs/promises";
import path from "node:path";
import { searchPath } from "../config/index.js";

/** sbin directories hold runc and losetup but are missing from many users' PATH. */
const EXTRA_DIRS = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/** The absolute path of an executable on PATH (plus the sbin directories), or undefined. */
export async function findBinary(name: string, pathDirs = searchPath()): Promise<string | undefined> {
  const dirs = [...pathDirs, ...EXTRA_DIRS];
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}
