/**
 * QEMU boots from snapshots (docs/vm-start.md), an adaptation of the boot steps (qemu.ts):
 * - the VM boots with `kindling.snapshot=1` and without this container's kindling.* options: its init
 *   releases the drives unread and says READY with nothing of a container in it;
 * - no snapshot for this VM's key yet: after READY, QMP `stop`, `migrate` to a file in the store, `cont`;
 * - a snapshot: QEMU starts with the same devices (this container's drive files and TAP behind them),
 *   `-S -incoming exec:cat <state>`, the agent socket connected before `cont`;
 * - both: SETUP sends the host's clock, 64 fresh random bytes and this container's options; the guest
 *   binds its drives again (re-reading sizes), mounts its root and overlay, and answers.
 */
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { stat } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { searchPath } from "../config/index.js";
import { KindlingError } from "../util/errors.js";
import { BootFailure, QEMU_BINARY, type QemuBoot, type QemuBootOptions, qemuArgs } from "./qemu.js";
import { QmpConnection } from "./qmp.js";
import {
  type FoundSnapshot,
  SNAPSHOT_FORMAT,
  type SnapshotInputs,
  SnapshotStore,
  snapshotKey,
  splitContainerOptions,
} from "./snapshot.js";
import type { VmSpec } from "./spec.js";
import type { StepList } from "./steps.js";

/** How long a save may take beyond the boot deadline (the state of a 512 MiB guest, written to disk). */
const SAVE_TIMEOUT_MS = 60_000;
/** Random bytes SETUP carries: the guest credits them and reseeds its RNG. */
const SEED_BYTES = 64;

/** A snapshot that did not restore: the boot is retried without it, after discard() removed it. */
export class RestoreFailed extends Error {
  constructor(
    message: string,
    readonly discard: () => Promise<void>,
  ) {
    super(message);
  }
}

/** Why this VM cannot start from a snapshot (then it boots as before), or undefined when it can. */
export function snapshotBlocker(spec: VmSpec, opts: QemuBootOptions): string | undefined {
  if (!spec.snapshots) return "snapshots are off";
  if ((opts.profile ?? "default") !== "default") return "the Firecracker-shaped profile";
  if ((spec.agent ?? opts.agent ?? "virtio-serial") !== "virtio-serial")
    return "the vsock agent (QEMU 7.2's vhost-user-vsock device cannot be migrated)";
  if (spec.shares.length > 0) return "virtio-fs shares (vhost-user-fs cannot be migrated)";
  if (!spec.initrdPath) return "no initramfs (the guest init needs one to wait for its root)";
  if (!/(^|\s)kindling\.root=/.test(spec.cmdline)) return "no kindling.root on the command line";
  return undefined;
}

interface SnapshotPlan {
  store: SnapshotStore;
  key: string;
  inputs: SnapshotInputs;
  /** this container's kindling.* options, for SETUP */
  options: string[];
  found?: FoundSnapshot;
}
const plans = new WeakMap<QemuBoot, SnapshotPlan>();

/** The boot steps with snapshots: plan (key, lookup), restore or boot-and-save, then SETUP. */
export function withSnapshot(steps: StepList<QemuBoot>): StepList<QemuBoot> {
  const waitReady = steps.step("wait-ready");
  return steps
    .insertAfter("choose-accel", { name: "plan-snapshot", run: planSnapshot })
    .swap({
      name: "wait-ready",
      run: async (ctx, scope) => {
        const plan = plans.get(ctx)!;
        if (plan.found) return restore(ctx, plan.found, plan);
        await waitReady.run(ctx, scope);
        await save(ctx, plan);
      },
    })
    .insertAfter("wait-ready", { name: "setup", run: setup });
}

async function planSnapshot(ctx: QemuBoot): Promise<void> {
  const spec = ctx.spec;
  const store = new SnapshotStore(spec.snapshots!);
  const { fixed, options } = splitContainerOptions(spec.cmdline);
  ctx.bootSpec = { ...spec, cmdline: `${fixed} kindling.snapshot=1` };
  const inputs: SnapshotInputs = {
    format: SNAPSHOT_FORMAT,
    vmm: await binaryIdentity(ctx.opts.qemuBinary ?? QEMU_BINARY),
    kernelSha256: await store.fileDigest(spec.kernelPath),
    initrdSha256: await store.fileDigest(spec.initrdPath!),
    accel: ctx.accel!,
    args: canonicalArgs(ctx.bootSpec, ctx),
  };
  const key = snapshotKey(inputs);
  const found = ctx.noRestore ? undefined : await store.find(key, inputs);
  plans.set(ctx, { store, key, inputs, options, ...(found ? { found } : {}) });
  // paused after the load, so that the agent's socket is connected before the guest runs again
  if (found) ctx.extraArgs = ["-S", "-incoming", `exec:cat ${shellQuote(found.statePath)}`];
}

/** QEMU's arguments for this VM's shape: every per-container path (drives, TAP, MAC, sockets) a placeholder. */
function canonicalArgs(spec: VmSpec, ctx: QemuBoot): string[] {
  const canon: VmSpec = {
    ...spec,
    kernelPath: "KERNEL",
    initrdPath: "INITRD",
    drives: spec.drives.map((d, i) => ({ ...d, id: `d${i}`, path: `DRIVE${i}` })),
    stateDir: "STATE",
    ...(spec.network ? { network: { ...spec.network, netns: "NETNS", tap: "TAP", mac: "MAC" } } : {}),
  };
  delete canon.snapshots;
  const paths = { consoleLog: "CONSOLE", agentSocket: "AGENT", qmpSocket: "QMP", virtiofsSockets: new Map() };
  return qemuArgs(canon, paths, ctx.accel!, ctx.opts.profile);
}

/** A QEMU build is identified by its path, size and mtime: another build may not load an older stream. */
async function binaryIdentity(bin: string): Promise<string> {
  const file = bin.includes("/")
    ? bin
    : (searchPath("/usr/bin:/bin")
        .map((d) => path.join(d, bin))
        .find((p) => existsSync(p)) ?? bin);
  const st = await stat(file).catch(() => undefined);
  return `${file}:${st?.size ?? 0}:${st?.mtimeMs ?? 0}`;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Opens QMP, retrying while QEMU has not created its socket yet. */
async function openQmp(ctx: QemuBoot): Promise<QmpConnection> {
  const vm = ctx.vm!;
  for (;;) {
    try {
      return await QmpConnection.open(vm.paths.qmpSocket);
    } catch (err) {
      if (vm.exited || Date.now() > ctx.deadline) throw err;
      await sleep(5);
    }
  }
}

/** Polls query-migrate until the migration (out or in) completed; throws its failure. */
async function migrationDone(
  ctx: QemuBoot,
  qmp: QmpConnection,
  deadline: number,
  what: string,
): Promise<void> {
  for (;;) {
    if (ctx.vm!.exited) throw new Error(`QEMU exited during the ${what}`);
    const r = (await qmp.execute("query-migrate")) as { status?: string; "error-desc"?: string };
    if (r.status === "completed") return;
    if (r.status === "failed" || r.status === "cancelled")
      throw new Error(`${what} ${r.status}${r["error-desc"] ? `: ${r["error-desc"]}` : ""}`);
    if (Date.now() > deadline) throw new Error(`${what} did not complete in time`);
    await sleep(5);
  }
}

async function restore(ctx: QemuBoot, found: FoundSnapshot, plan: SnapshotPlan): Promise<void> {
  const vm = ctx.vm!;
  const discard = () => plan.store.discard(plan.key);
  let qmp: QmpConnection | undefined;
  try {
    qmp = await openQmp(ctx);
    vm.stages.vmmStart = Date.now() - ctx.started;
    const loading = Date.now();
    await migrationDone(ctx, qmp, ctx.deadline, "restore");
    vm.stages.restore = Date.now() - loading;
    const cont = Date.now();
    await qmp.execute("cont");
    vm.stages.cont = Date.now() - cont;
  } catch (err) {
    if (Date.now() > ctx.deadline)
      throw new BootFailure(`restore of snapshot ${plan.key}: ${(err as Error).message}`);
    const why = ctx.stderr.trim().split("\n").slice(-2).join("; ") || (err as Error).message;
    throw new RestoreFailed(`snapshot ${plan.key} did not restore: ${why}`, discard);
  } finally {
    qmp?.close();
  }
  vm.agent.assumeReady(found.meta.ready);
  vm.startKind = "restored";
}

/** After a boot's READY: stop, write the state into the store, go on. A failed save only costs the snapshot. */
async function save(ctx: QemuBoot, plan: SnapshotPlan): Promise<void> {
  const vm = ctx.vm!;
  const t = Date.now();
  const readyMs = t - ctx.started;
  const qmp = await openQmp(ctx);
  try {
    await qmp.execute("stop");
    const writer = await plan.store.begin(plan.key);
    try {
      await qmp.execute("migrate", { uri: `exec:cat > ${shellQuote(writer.statePath)}` });
      await migrationDone(ctx, qmp, Date.now() + SAVE_TIMEOUT_MS, "snapshot save");
      await writer.commit({
        key: plan.key,
        inputs: plan.inputs,
        ready: await vm.agent.ready(),
        bootMs: readyMs,
      });
      vm.startKind = "snapshot-saved";
    } catch (err) {
      await writer.abort();
      vm.stages.saveFailed = 1;
      process.stderr.write(`kindling: VM snapshot not saved: ${(err as Error).message}\n`);
    }
    await qmp.execute("cont");
  } finally {
    qmp.close();
  }
  vm.stages.save = Date.now() - t;
}

/** SETUP: clock, entropy, this container's root options; resolves once the guest's root is the overlay. */
async function setup(ctx: QemuBoot): Promise<void> {
  const vm = ctx.vm!;
  const plan = plans.get(ctx)!;
  const t = Date.now();
  const realtimeNs = BigInt(Date.now()) * 1_000_000n;
  const done = vm.agent
    .setup({ realtimeNs, seed: randomBytes(SEED_BYTES), options: plan.options })
    .then(() => "done" as const);
  const exited = vm.wait().then(() => "exited" as const);
  const late = sleep(Math.max(0, ctx.deadline - Date.now()), undefined, { ref: false }).then(
    () => "timeout" as const,
  );
  const result = await Promise.race([done, exited, late]).catch((err: Error) => {
    if (err instanceof KindlingError && !vm.exited) throw new BootFailure(err.message);
    return "exited" as const;
  });
  if (result === "timeout") throw new BootFailure("no answer to SETUP before the boot deadline");
  if (result === "exited") {
    const fatal = /kindling-init: \[\d+ ms\] FATAL: ([^\r\n]*)/.exec(await vm.consoleTail(200))?.[1];
    throw new BootFailure(fatal ? `guest init failed: ${fatal}` : "QEMU exited during SETUP");
  }
  vm.stages.setup = Date.now() - t;
  vm.bootMs = Date.now() - ctx.started;
}
