/**
 * Firecracker snapshots (v1.16.1 API, ../shared/firecracker/firecracker-v1.16.1.yaml; docs/vm-start.md):
 * - create, on a booted VM: `PATCH /vm {"state":"Paused"}`, `PUT /snapshot/create` (a Full snapshot: the
 *   microVM state and the guest memory, two files), `PATCH /vm {"state":"Resumed"}`;
 * - restore, on a fresh firecracker process (nothing configured but the logger and metrics):
 *   `PUT /snapshot/load` with the memory file as a File backend, not resumed, the vsock's socket and the
 *   TAP overridden with this VM's; then `PATCH /drives/{id}` to this container's files (the guest re-reads
 *   them: it released its drives before the snapshot, src/vm/qemu-snapshot.ts); `PATCH /vm Resumed`.
 * The snapshot is keyed and stored like QEMU's (src/vm/snapshot.ts).
 */
import type { VmSpec } from "../spec.js";
import type { StepList } from "../steps.js";
import type { FirecrackerApi } from "./client.js";
import { type FirecrackerCall, type RenderOptions, renderDrives, renderNetworkInterfaces } from "./render.js";

/** A snapshot's two files, as firecracker sees them (inside the chroot when jailed). */
export interface FirecrackerSnapshotFiles {
  /** the microVM state */
  snapshotPath: string;
  /** the guest memory */
  memPath: string;
}

export function renderSnapshotCreate(files: FirecrackerSnapshotFiles): FirecrackerCall[] {
  return [
    { method: "PATCH", path: "/vm", body: { state: "Paused" } },
    {
      method: "PUT",
      path: "/snapshot/create",
      body: { snapshot_type: "Full", snapshot_path: files.snapshotPath, mem_file_path: files.memPath },
    },
    { method: "PATCH", path: "/vm", body: { state: "Resumed" } },
  ];
}

/** Load (paused), this VM's vsock socket and TAP, this container's drive files, then resume. */
export function renderSnapshotLoad(
  spec: VmSpec,
  files: FirecrackerSnapshotFiles,
  opts: RenderOptions = {},
): FirecrackerCall[] {
  const load: Record<string, unknown> = {
    snapshot_path: files.snapshotPath,
    mem_backend: { backend_type: "File", backend_path: files.memPath },
    resume_vm: false,
  };
  if (opts.vsock) load.vsock_override = { uds_path: opts.vsock.uds_path };
  const nics = renderNetworkInterfaces(spec);
  if (nics.length > 0)
    load.network_overrides = nics.map((n) => ({ iface_id: n.iface_id, host_dev_name: n.host_dev_name }));
  const calls: FirecrackerCall[] = [];
  if (opts.logger) calls.push({ method: "PUT", path: "/logger", body: opts.logger });
  if (opts.metrics) calls.push({ method: "PUT", path: "/metrics", body: opts.metrics });
  calls.push({ method: "PUT", path: "/snapshot/load", body: load });
  for (const d of renderDrives(spec, opts)) {
    calls.push({
      method: "PATCH",
      path: `/drives/${d.drive_id}`,
      body: { drive_id: d.drive_id, path_on_host: d.path_on_host },
    });
  }
  calls.push({ method: "PATCH", path: "/vm", body: { state: "Resumed" } });
  return calls;
}

/** Pauses the VM, writes its snapshot, resumes it (also when the write failed). */
export async function createFirecrackerSnapshot(
  api: FirecrackerApi,
  files: FirecrackerSnapshotFiles,
): Promise<void> {
  const [pause, create, resume] = renderSnapshotCreate(files);
  await api.call(pause.method, pause.path, pause.body);
  try {
    await api.call(create.method, create.path, create.body);
  } finally {
    await api.call(resume.method, resume.path, resume.body);
  }
}

/** What the boot steps of vm.ts need to load a snapshot instead of configuring a VM. */
interface SnapshotBoot {
  readonly spec: VmSpec;
  render?: RenderOptions;
  api?: FirecrackerApi;
}

/**
 * The boot steps restoring `files` instead of configuring and starting the VM: `configure-api` (machine,
 * boot source, drives, InstanceStart) becomes the load, drive updates and resume.
 */
export function withSnapshotLoad<C extends SnapshotBoot>(
  steps: StepList<C>,
  files: FirecrackerSnapshotFiles,
): StepList<C> {
  return steps.swap({
    name: "configure-api",
    run: async (ctx) => {
      for (const call of renderSnapshotLoad(ctx.spec, files, ctx.render)) {
        await ctx.api!.call(call.method, call.path, call.body);
      }
    },
  });
}
