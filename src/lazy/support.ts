import { access, constants } from "node:fs/promises";
import { createRequire } from "node:module";
import { errorMessage } from "../util/errors.js";
import { exec } from "../util/exec.js";

/** Why lazy image files cannot work on this host, or null if they can (for `kindling doctor`). */
export async function lazyUnsupportedReason(): Promise<string | null> {
  try {
    await access("/dev/fuse", constants.R_OK | constants.W_OK);
  } catch {
    return "/dev/fuse is missing or not accessible (load the fuse module; in a container, pass /dev/fuse)";
  }
  try {
    createRequire(import.meta.url)("fuse-native");
  } catch (err) {
    return `fuse-native does not load (${errorMessage(err)}); install Debian's libfuse2`;
  }
  const r = await exec("fusermount", ["-V"], { allowFailure: true }).catch(() => null);
  if (!r) return "fusermount is not installed (Debian package fuse or fuse3)";
  return null;
}
