import { readdir } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { detachLoop } from "../host/loop.js";
import { unmount } from "../host/mounts.js";
import { listPids, readCmdline } from "../host/proc.js";
import { isSameProcess, processStartTime } from "../host/process.js";
import {
  describeNetworkResource,
  type NetworkResource,
  releaseNetworkResource,
} from "../network/resources.js";
import { exec } from "../util/exec.js";
import { type SyncTarget, syncBack } from "./vm-rootfs/syncback.js";

/**
 * Something a run holds on the host, as recorded in its owner.json. A live run releases it through
 * its Scope; a run that died is released from this record by cleanupStaleRuns. To add a kind (a VMM
 * process, a tap device...), add it here and to releaseResource.
 */
export type Resource =
  | { kind: "mount"; target: string }
  /** autoclear: the kernel detaches it when its last user (the squashfs mount) goes away. */
  | { kind: "loop"; device: string; file: string; identity?: string; autoclear?: boolean }
  | { kind: "oci-container"; binary: string; root: string; id: string }
  | { kind: "process"; pid: number; startTime: number; name: string }
  /** A VM's processes (QEMU or Firecracker, virtiofsd): every process whose command line names `dir`. */
  | { kind: "vm-processes"; dir: string }
  /** An ext4 drive holding rw -v mounts, copied back to the host when released (src/runtime/vm-rootfs/syncback.ts). */
  | { kind: "sync-back"; image: string; mountPoint: string; targets: SyncTarget[] }
  /** A network namespace or a CNI attachment (src/network/resources.ts). */
  | NetworkResource;

export function describeResource(r: Resource): string {
  switch (r.kind) {
    case "mount":
      return `mount ${r.target}`;
    case "loop":
      return `loop device ${r.device} (${r.file})`;
    case "oci-container":
      return `${r.binary} container ${r.id}`;
    case "process":
      return `${r.name} (pid ${r.pid})`;
    case "vm-processes":
      return `VM processes of ${r.dir}`;
    case "sync-back":
      return `sync-back of ${r.targets.map((t) => t.dest).join(", ")} from ${r.image}`;
    case "netns":
    case "cni":
      return describeNetworkResource(r);
  }
}

/** Releases one resource; releasing one that is already gone is not an error. */
export async function releaseResource(r: Resource): Promise<void> {
  switch (r.kind) {
    case "mount":
      return unmount(r.target);
    case "loop":
      // Once autoclear is set the device may already serve another run of the same file: hands off.
      return r.autoclear ? undefined : detachLoop(r.device, r.file, r.identity);
    case "oci-container":
      return deleteOciContainer(r.binary, r.root, r.id);
    case "process":
      return killProcess(r.pid, r.startTime);
    case "vm-processes":
      return killProcessesNaming(r.dir);
    case "sync-back":
      return syncBack(r.image, r.mountPoint, r.targets);
    case "netns":
    case "cni":
      return releaseNetworkResource(r);
  }
}

/**
 * Kills every process whose command line mentions `dir/` (a VMM and its helpers name their sockets and
 * console log there). Found by name, not pid: it works for processes spawned inside a backend and after
 * a crash of kindling between spawn and record.
 */
async function killProcessesNaming(dir: string): Promise<void> {
  const needle = `${dir}/`;
  for (let round = 0; round < 50; round++) {
    const found: number[] = [];
    for (const pid of await listPids()) {
      if (pid === process.pid) continue;
      if ((await readCmdline(pid)).includes(needle) && processStartTime(pid) !== undefined) found.push(pid);
    }
    if (found.length === 0) return;
    for (const pid of found) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
    await sleep(20);
  }
}

/**
 * Kills the container's processes and deletes its state. KILL first: runsc's `delete --force` on a
 * running container whose `runsc run` lost its parent waits 5 s and fails ("context deadline").
 */
async function deleteOciContainer(binary: string, root: string, id: string): Promise<void> {
  // `run` removes its state when the container exits: an empty state root needs no (slow) exec.
  const state = await readdir(root).catch(() => []);
  if (state.length === 0) return;
  await exec(binary, ["--root", root, "kill", "--all", id, "KILL"], { allowFailure: true });
  const r = await exec(binary, ["--root", root, "delete", "--force", id], { allowFailure: true });
  if (r.code !== 0 && !/does not exist|not exist|no such/i.test(r.stderr)) {
    throw new Error(`${binary} delete --force ${id} failed: ${r.stderr.trim()}`);
  }
}

async function killProcess(pid: number, startTime: number): Promise<void> {
  for (let i = 0; i < 50 && isSameProcess(pid, startTime); i++) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      return;
    }
    await sleep(20);
  }
}
