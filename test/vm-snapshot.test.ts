/**
 * QEMU snapshot restore (src/vm/qemu-snapshot.ts, docs/vm-start.md) with real VMs and Kindling's built
 * kernel: the first VM of a shape boots and saves a snapshot, later ones restore it with their own drives,
 * clock, RNG seed and network; a changed init, memory size or a broken state file is never restored.
 */
import assert from "node:assert/strict";
import { appendFile, copyFile, mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { withConfig } from "../src/config/index.js";
import type { RawRunFlags } from "../src/runtime/options.js";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import { prepareGuestBoot } from "../src/vm/kernel.js";
import { bootQemuVm, type QemuVm } from "../src/vm/qemu.js";
import type { SnapshotMeta } from "../src/vm/snapshot.js";
import type { VmSpec } from "../src/vm/spec.js";
import { within } from "./helpers/bounded.js";
import { buildBusyboxTree, makeSquashfs } from "./helpers/images.js";
import { leftovers, pidsNaming } from "./helpers/leftovers.js";
import { networkLeftovers } from "./helpers/network.js";
import { runPiped } from "./helpers/run.js";
import { builtKernelHome, type VmTestHome } from "./helpers/vm-image.js";

const BOOT_MS = 120_000;
let t: VmTestHome;
let work: string;
let store: string;

before(async () => {
  t = await builtKernelHome();
  work = path.join(t.tmp, "snap");
  store = path.join(work, "store");
  await mkdir(work, { recursive: true });
});

after(async () => {
  if (!t) return;
  await cleanupStaleRuns(t.home).catch(() => {});
  const left = [...(await leftovers(t.home.root)), ...(await networkLeftovers(t.home))];
  const vmms = await pidsNaming(`${work}/`);
  await t.cleanup();
  assert.deepEqual(left, []);
  assert.deepEqual(vmms, [], "no QEMU outlives the tests");
});

/** A squashfs root (busybox) whose /etc/marker says `marker`, padded so that images differ in size. */
async function rootImage(name: string, marker: string, padBytes = 0): Promise<string> {
  const tree = path.join(work, `tree-${name}`);
  await buildBusyboxTree(tree);
  await mkdir(path.join(tree, "etc"), { recursive: true });
  await writeFile(path.join(tree, "etc", "marker"), `${marker}\n`);
  if (padBytes) await writeFile(path.join(tree, "pad"), Buffer.alloc(padBytes, 7));
  const file = path.join(work, `${name}.squashfs`);
  await makeSquashfs(tree, file);
  await rm(tree, { recursive: true, force: true });
  return file;
}

let vmCount = 0;
async function vmSpec(
  root: string,
  opts: { memoryMiB?: number; initrd?: string; kernel?: "built" | "debian" } = {},
): Promise<VmSpec> {
  const boot = await withConfig({ guestKernel: opts.kernel ?? "built" }, () =>
    prepareGuestBoot(t.home, {
      boot: { root: "/dev/vda", rootfsType: "squashfs", agent: "virtio-serial" },
      ...(opts.initrd ? { initrdPath: opts.initrd } : {}),
    }),
  );
  return {
    ...boot,
    ...(opts.initrd ? { initrdPath: opts.initrd } : {}),
    memoryMiB: opts.memoryMiB ?? 256,
    vcpus: 1,
    drives: [{ id: "root", path: root, readOnly: true, isRoot: true }],
    shares: [],
    stateDir: path.join(work, `vm${vmCount++}`),
    agent: "virtio-serial",
    snapshots: store,
  };
}

/** Runs a command in the VM; its stdout. */
async function sh(vm: QemuVm, script: string): Promise<string> {
  const chunks: Buffer[] = [];
  const { Writable } = await import("node:stream");
  const out = new Writable({
    write(c, _e, cb) {
      chunks.push(c);
      cb();
    },
  });
  const p = await vm.agent.start({ args: ["/bin/sh", "-c", script], env: ["PATH=/bin"] }, { stdout: out });
  const exit = await within(p.exited, 60_000, `${script} to exit`);
  assert.equal(exit.status, 0, `${script}: status ${exit.status}`);
  return Buffer.concat(chunks).toString();
}

async function withVm<T>(spec: VmSpec, body: (vm: QemuVm) => Promise<T>): Promise<T> {
  const vm = await bootQemuVm(spec, { home: t.home, bootTimeoutMs: BOOT_MS });
  try {
    return await body(vm);
  } finally {
    await vm.close();
  }
}

const keys = async () =>
  (await readdir(store).catch(() => [] as string[])).filter((n) => /^[0-9a-f]{32}$/.test(n));

describe("QEMU snapshots (VM level)", () => {
  let rootA: string;
  let rootB: string;
  before(async () => {
    rootA = await rootImage("a", "image A");
    rootB = await rootImage("b", "image B", 3 << 20); // another size: the guest must read it afresh
  });

  test("the first VM saves a snapshot; the next one restores it with its own root drive", async () => {
    await withVm(await vmSpec(rootA), async (vm) => {
      assert.equal(vm.startKind, "snapshot-saved");
      assert.equal(await sh(vm, "cat /etc/marker"), "image A\n");
    });
    assert.equal((await keys()).length, 1);
    const hostBefore = Math.floor(Date.now() / 1000);
    await withVm(await vmSpec(rootB), async (vm) => {
      assert.equal(vm.startKind, "restored");
      assert.equal(await sh(vm, "cat /etc/marker; wc -c < /pad"), `image B\n${3 << 20}\n`);
      // the snapshot's clock is older than hostBefore: SETUP set the host's
      const guestNow = Number((await sh(vm, "date +%s")).trim());
      assert.ok(guestNow >= hostBefore, `guest clock ${guestNow} is the host's (>= ${hostBefore})`);
      assert.match(await vm.consoleTail(200), /setup: restored, clock set, RNG reseeded/);
    });
    assert.equal((await keys()).length, 1, "restoring made no new snapshot");
  });

  test("two restored VMs have their own RNG output and their own writable layer", async () => {
    const spec1 = await vmSpec(rootA);
    const spec2 = await vmSpec(rootA);
    const vm1 = await bootQemuVm(spec1, { home: t.home, bootTimeoutMs: BOOT_MS });
    try {
      const vm2 = await bootQemuVm(spec2, { home: t.home, bootTimeoutMs: BOOT_MS });
      try {
        assert.equal(vm1.startKind, "restored");
        assert.equal(vm2.startKind, "restored");
        const rand = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
        const [r1, r2] = [await sh(vm1, rand), await sh(vm2, rand)];
        assert.equal(r1.length, 64);
        assert.notEqual(r1, r2, "restored guests draw different random bytes");
        await sh(vm1, "echo one > /written && echo one > /tmp/written");
        assert.equal(await sh(vm2, "ls /written /tmp/written 2>/dev/null; echo end"), "end\n");
        assert.equal(await sh(vm1, "cat /written"), "one\n");
      } finally {
        await vm2.close();
      }
    } finally {
      await vm1.close();
    }
  });

  test("a changed init (initramfs) or memory size is a new key: the old snapshot is not used", async () => {
    const base = await vmSpec(rootA);
    const changed = path.join(work, "changed.cpio");
    await copyFile(base.initrdPath!, changed);
    await appendFile(changed, Buffer.alloc(512)); // zero padding after the archive: another digest, same files
    await withVm(await vmSpec(rootA, { initrd: changed }), async (vm) => {
      assert.equal(vm.startKind, "snapshot-saved");
      assert.equal(await sh(vm, "cat /etc/marker"), "image A\n");
    });
    await withVm(await vmSpec(rootA, { memoryMiB: 192 }), async (vm) => {
      assert.equal(vm.startKind, "snapshot-saved");
    });
    assert.equal((await keys()).length, 3);
  });

  test("a snapshot whose state does not load is removed and the VM boots", async () => {
    const spec = await vmSpec(rootA);
    const key = await findKeyOf(spec);
    const state = path.join(store, key, "state");
    const size = (await stat(state)).size;
    await writeFile(state, Buffer.alloc(size, 0x5a)); // same size: found, then refused by QEMU
    await withVm(spec, async (vm) => {
      assert.equal(vm.startKind, "snapshot-saved", "booted and saved a good one again");
      assert.equal(await sh(vm, "cat /etc/marker"), "image A\n");
    });
    await withVm(await vmSpec(rootA), async (vm) => assert.equal(vm.startKind, "restored"));
  });

  test("Debian's kernel (modules from the initramfs): saved, then restored with another root", async () => {
    await withVm(await vmSpec(rootA, { kernel: "debian" }), async (vm) => {
      assert.equal(vm.startKind, "snapshot-saved");
      assert.equal(await sh(vm, "cat /etc/marker"), "image A\n");
    });
    await withVm(await vmSpec(rootB, { kernel: "debian" }), async (vm) => {
      assert.equal(vm.startKind, "restored");
      assert.equal(await sh(vm, "cat /etc/marker; wc -c < /pad"), `image B\n${3 << 20}\n`);
    });
  });

  test("two first VMs of one shape save at once: one snapshot is published, the next VM restores it", async () => {
    const own = path.join(work, "store-race");
    const specs = [await vmSpec(rootA), await vmSpec(rootA)].map((s) => ({ ...s, snapshots: own }));
    const vms = await Promise.all(specs.map((s) => bootQemuVm(s, { home: t.home, bootTimeoutMs: BOOT_MS })));
    try {
      assert.deepEqual(
        vms.map((v) => v.startKind),
        ["snapshot-saved", "snapshot-saved"],
      );
      for (const vm of vms) assert.equal(await sh(vm, "cat /etc/marker"), "image A\n");
    } finally {
      await Promise.all(vms.map((v) => v.close()));
    }
    const names = await readdir(own);
    assert.equal(names.filter((n) => /^[0-9a-f]{32}$/.test(n)).length, 1);
    assert.deepEqual(
      names.filter((n) => n.startsWith(".tmp-")),
      [],
      "the loser's temp dir is gone",
    );
    await withVm({ ...(await vmSpec(rootA)), snapshots: own }, async (vm) =>
      assert.equal(vm.startKind, "restored"),
    );
  });

  test("a save that a crash interrupted leaves a temp dir that the next save removes", async () => {
    const own = path.join(work, "store-crash");
    await mkdir(path.join(own, ".tmp-0123456789abcdef0123456789abcdef-999999999-abcdef"), {
      recursive: true,
    });
    await writeFile(
      path.join(own, ".tmp-0123456789abcdef0123456789abcdef-999999999-abcdef", "state"),
      "partial",
    );
    await withVm({ ...(await vmSpec(rootA)), snapshots: own }, async (vm) =>
      assert.equal(vm.startKind, "snapshot-saved"),
    );
    assert.deepEqual(
      (await readdir(own)).filter((n) => n.startsWith(".tmp-")),
      [],
      "the dead writer's temp dir is gone",
    );
  });

  test("without a store (snapshots off) the VM boots", async () => {
    const spec = await vmSpec(rootA);
    delete spec.snapshots;
    await withVm(spec, async (vm) => {
      assert.equal(vm.startKind, "boot");
      assert.doesNotMatch(await vm.consoleTail(200), /snapshot: /);
    });
  });
});

/** The key of the default-shaped VM's snapshot: the one made with 256 MiB and the original initramfs. */
async function findKeyOf(spec: VmSpec): Promise<string> {
  for (const key of await keys()) {
    const meta = JSON.parse(await readFile(path.join(store, key, "meta.json"), "utf8")) as SnapshotMeta;
    if (meta.inputs.args.join(" ").includes(" -m 256 ") && meta.inputs.initrdSha256 !== "") {
      const initrd = await readFile(spec.initrdPath!);
      const { createHash } = await import("node:crypto");
      if (createHash("sha256").update(initrd).digest("hex") === meta.inputs.initrdSha256) return key;
    }
  }
  throw new Error("no snapshot of the default shape");
}

describe("QEMU snapshots (kindling run)", () => {
  async function run(command: string[], flags: RawRunFlags) {
    return withConfig({ guestKernel: "built", vmSnapshots: true }, () =>
      runPiped({
        home: t.home,
        image: "ml",
        command,
        flags: { runtime: "qemu", ...flags },
        notify: () => {},
      }),
    );
  }

  /** When each snapshot of the home was last used (a restore marks it). */
  async function used(): Promise<Map<string, number>> {
    const dir = t.home.snapshots;
    const out = new Map<string, number>();
    for (const n of await readdir(dir).catch(() => [] as string[])) {
      if (/^[0-9a-f]{32}$/.test(n)) out.set(n, (await stat(path.join(dir, n, "meta.json"))).mtimeMs);
    }
    return out;
  }

  test("runs of one image: hostname, env, image files and a writable root per container; RNG differs", async () => {
    const script =
      'hostname; echo "$WHO"; cat /data/hello; cat /mine 2>/dev/null; echo $1 > /mine; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"';
    const first = await run(["/bin/sh", "-c", script, "sh", "first"], {
      network: "none",
      hostname: "h1",
      env: ["WHO=one"],
    });
    assert.equal(first.status, 0, first.stderr);
    const saved = await used();
    assert.equal(saved.size, 1, "the first run saved a snapshot");
    const results = [];
    for (const [i, who] of ["two", "three"].entries()) {
      const r = await run(["/bin/sh", "-c", script, "sh", who], {
        network: "none",
        hostname: `h${i + 2}`,
        env: [`WHO=${who}`],
      });
      assert.equal(r.status, 0, r.stderr);
      results.push(r.stdout);
    }
    const lines = [first.stdout, ...results].map((o) => o.split("\n"));
    assert.deepEqual(
      lines.map((l) => l.slice(0, 3)),
      [
        ["h1", "one", "hello from layer 2"],
        ["h2", "two", "hello from layer 2"],
        ["h3", "three", "hello from layer 2"],
      ],
    );
    // nobody saw another run's /mine; the random bytes differ
    for (const l of lines) assert.equal(l.length, 4, `no /mine of another run: ${JSON.stringify(l)}`);
    assert.equal(new Set(lines.map((l) => l[3])).size, 3);
    const after = await used();
    assert.deepEqual([...after.keys()], [...saved.keys()], "later runs restored the same snapshot");
    assert.ok([...after.values()][0]! > [...saved.values()][0]!, "the snapshot was used again");
  });

  test("a restored run on the CNI bridge: eth0 has this run's address and MAC", async () => {
    const script = "cat /sys/class/net/eth0/address; ip -o -4 addr show eth0";
    const a = await run(["/bin/sh", "-c", script], { rootfs: "squashfs", network: "bridge" });
    const b = await run(["/bin/sh", "-c", script], { rootfs: "squashfs", network: "bridge" });
    for (const r of [a, b]) {
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /^([0-9a-f]{2}:){5}[0-9a-f]{2}\n.*eth0\s+inet 10\.\d+\.\d+\.\d+\/24/);
    }
    assert.notEqual(a.stdout.split("\n")[0], b.stdout.split("\n")[0], "each run's own MAC");
  });
});
