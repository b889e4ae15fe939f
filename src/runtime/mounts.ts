import { readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { exec } from "../util/exec.js";

export interface MountInfo {
  mountPoint: string;
  fsType: string;
  source: string;
}

/** /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo. */
function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

export async function readMounts(): Promise<MountInfo[]> {
  const text = await readFile("/proc/self/mountinfo", "utf8");
  const out: MountInfo[] = [];
  for (const line of text.split("\n")) {
    const sep = line.indexOf(" - ");
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(" ");
    const right = line.slice(sep + 3).split(" ");
    out.push({ mountPoint: unescapeOctal(left[4]), fsType: right[0], source: unescapeOctal(right[1]) });
  }
  return out;
}

/** Mounts whose mount point is `dir` or below it, deepest first (the order to unmount them). */
export async function mountsUnder(dir: string): Promise<MountInfo[]> {
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  return (await readMounts())
    .filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(prefix))
    .sort((a, b) => b.mountPoint.length - a.mountPoint.length);
}

export async function isMounted(target: string): Promise<boolean> {
  return (await readMounts()).some((m) => m.mountPoint === target);
}

export async function mount(fsType: string, source: string, target: string, options: string): Promise<void> {
  await exec("mount", ["-t", fsType, "-o", options, source, target]);
}

/**
 * Unmounts every mount stacked on `target`. A busy mount is retried for a moment (a container's
 * last process may still be exiting), then detached lazily so cleanup never blocks for good.
 */
export async function unmount(target: string): Promise<void> {
  for (let attempt = 0; await isMounted(target); attempt++) {
    const r = await exec("umount", [target], { allowFailure: true });
    if (r.code === 0) continue;
    if (attempt < 20 && /busy/i.test(r.stderr)) {
      await sleep(100);
      continue;
    }
    if (attempt >= 20) {
      process.stderr.write(`kindling: ${target} is still busy; detaching it lazily\n`);
      await exec("umount", ["-l", target]);
      continue;
    }
    throw new Error(`umount ${target} failed: ${r.stderr.trim()}`);
  }
}
