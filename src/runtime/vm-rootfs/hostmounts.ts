/** Host-side bind mounts for building per-run images, each held by the run dir (crash-safe). */
import { mkdir, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { exec } from "../../util/exec.js";
import type { Scope } from "../../util/scope.js";
import { resolveInRoot } from "../rootpath.js";
import type { RunDir } from "../rundir.js";
import type { VolumeSpec } from "../types.js";

/** Binds `source` onto `target` (created as a directory or an empty file to match), read-only if asked. */
export async function bindMount(
  runDir: RunDir,
  scope: Scope,
  source: string,
  target: string,
  readOnly: boolean,
): Promise<void> {
  const isDir = (await stat(source)).isDirectory();
  await mkdir(isDir ? target : path.dirname(target), { recursive: true });
  if (!isDir) await writeFile(target, "", { flag: "a" });
  await runDir.hold(scope, { kind: "mount", target });
  await exec("mount", ["--bind", source, target]);
  // A read-only bind needs a remount: the first mount(2) ignores MS_RDONLY with MS_BIND.
  if (readOnly) await exec("mount", ["-o", "remount,bind,ro", target]);
}

/** Binds each volume at its destination inside `root` (the note's "bind into the merged directory"). */
export async function bindVolumesInto(
  runDir: RunDir,
  scope: Scope,
  root: string,
  volumes: VolumeSpec[],
): Promise<void> {
  for (const v of byDepth(volumes)) {
    // Resolved inside root: an image's symlink (/var/run -> /run, or -> /etc) must not lead out of it.
    await bindMount(runDir, scope, v.source, await resolveInRoot(root, v.destination), v.readOnly);
  }
}

/** Parents before children: -v a:/data -v b:/data/sub must mount /data first. */
export function byDepth<T extends { destination: string }>(volumes: T[]): T[] {
  return [...volumes].sort((a, b) => a.destination.split("/").length - b.destination.split("/").length);
}
