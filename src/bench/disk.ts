import { exec } from "../util/exec.js";

/**
 * Bytes `dir` occupies on disk: allocated blocks (a sparse file counts what it holds, not its
 * length), staying on dir's filesystem (-x), so mounts inside it (the overlay, the image's
 * squashfs, a FUSE file) are not counted as the container's.
 */
export async function diskUsage(dir: string): Promise<number> {
  const r = await exec("du", ["-s", "-x", "--block-size=1", dir], { allowFailure: true });
  const bytes = Number.parseInt(r.stdout.trim().split(/\s/)[0] ?? "", 10);
  return Number.isFinite(bytes) ? bytes : 0;
}
