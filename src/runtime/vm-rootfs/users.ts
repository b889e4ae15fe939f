import { exec } from "../../util/exec.js";
import { parseGroup, parsePasswd, readUserDb, type UserDb } from "../users.js";

/**
 * The image's users, read straight from its SquashFS file with `unsquashfs -cat`: no mount, and through
 * the lazy file only the blocks of two small files and the metadata that leads to them are fetched.
 */
export async function readImageUsers(squashfsFile: string): Promise<UserDb> {
  const cat = async (p: string) =>
    (await exec("unsquashfs", ["-cat", squashfsFile, p], { allowFailure: true })).stdout;
  const [passwd, group] = await Promise.all([cat("etc/passwd"), cat("etc/group")]);
  return { passwd: parsePasswd(passwd), groups: parseGroup(group) };
}

export { readUserDb };
