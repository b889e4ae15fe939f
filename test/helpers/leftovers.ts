/** The leak check of tests and benchmarks: what a run under a home may have left on the host. */
import { readdir, stat } from "node:fs/promises";
import path from "node:path";
import { attachedLoops } from "../../src/host/loop.js";
import { mountsUnder } from "../../src/host/mounts.js";
import { listPids, readCgroup, readCmdline } from "../../src/host/proc.js";
import { stopIdleShared } from "../../src/lazy/index.js";
import { exec } from "../../src/util/exec.js";
import { KindlingHome } from "../../src/util/home.js";
import { spareMarker, stopHomeService } from "./home-service.js";

/** Pids of other processes whose command line (NUL-separated) contains `needle` (and starts with `prog`). */
export async function pidsNaming(needle: string, prog = ""): Promise<number[]> {
  const out: number[] = [];
  for (const pid of await listPids()) {
    if (pid === process.pid) continue;
    const cmd = await readCmdline(pid);
    if (cmd.startsWith(prog) && cmd.includes(needle)) out.push(pid);
  }
  return out;
}

async function releaseProcessesOf(home: string): Promise<number> {
  let n = 0;
  for (const pid of await pidsNaming("/run/kindling/network/runs/", "/bin/sh")) {
    if ((await readCmdline(pid)).includes(`${home}/`)) n++;
  }
  return n;
}

/**
 * A run's network is released by a process handed off at its end (src/network/teardown.ts), which may
 * still be running when the run's client has returned: waits (bounded) for those of `home`, so the
 * scan reports only one that does not finish.
 */
async function networkReleasesDone(home: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if ((await releaseProcessesOf(home)) === 0) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * What a run under `home` might have left on the host (after stopping the home's service): mounts under it (overlay, squashfs, lazy
 * FUSE), loop devices on `imageFile` or on files under `home`, processes naming `home` (runc,
 * runsc, lazy daemons, VMMs, supervisors), processes and cgroups of containers `ids`, and run dirs.
 * Empty when clean. Shared lazy daemons that no live process uses are stopped first: they would
 * leave on their own after their idle time; one that a dead run still seems to use is reported.
 */
export async function leftovers(home: string, imageFile?: string, ids: string[] = []): Promise<string[]> {
  // A service the CLI started keeps images warm and a spare supervisor: its, not a run's. Stopped
  // first; containers still running under their supervisors are not touched (and are reported).
  await stopHomeService(home);
  await stopIdleShared(new KindlingHome(home));
  await networkReleasesDone(home);
  const out: string[] = [];
  for (const m of await mountsUnder(home)) out.push(`mount ${m.mountPoint}`);
  for (const line of await attachedLoops()) {
    if (line.includes(`(${home}/`) || (imageFile && line.includes(`(${imageFile})`)))
      out.push(`loop ${line}`);
  }
  for (const pid of await listPids()) {
    if (pid === process.pid) continue;
    const cmd = await readCmdline(pid);
    // a stopped service's spare supervisor exits on its own once loaded (the kit's teardown waits)
    if (cmd.includes(spareMarker(home))) continue;
    if (cmd.includes(`${home}/`)) out.push(`process ${pid}: ${cmd.replaceAll("\0", " ")}`);
    const cgroup = await readCgroup(pid);
    for (const id of ids) {
      if (cgroup.includes(`/kindling/${id}\n`)) out.push(`process ${pid} of container ${id}`);
    }
  }
  for (const id of ids) {
    const dir = `/sys/fs/cgroup/memory/kindling/${id}`;
    if (
      await stat(dir).then(
        () => true,
        () => false,
      )
    )
      out.push(`cgroup ${dir}`);
  }
  // Kindling gives each run its own runtime root (removed with the run dir); the default root
  // must not know our containers either.
  const listed = (await exec("runc", ["list", "-q"], { allowFailure: true })).stdout.split("\n");
  for (const id of ids) if (listed.includes(id)) out.push(`runc list: ${id}`);
  const runs = await readdir(path.join(home, "run")).catch(() => []);
  for (const r of runs) out.push(`run dir ${r}`);
  return out;
}
