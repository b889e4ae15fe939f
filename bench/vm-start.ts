/**
 * microVM start benchmark (not a test), issue 14. Three parts, each interleaved in one run:
 *
 * 1. End to end: `kindling run --network none bb true` as a process (the CLI, as a user runs it) with
 *    --runtime runc, and --runtime qemu per kernel (Debian's with an initramfs of modules; Kindling's
 *    built one, no modules), each booting (KINDLING_VM_SNAPSHOTS=0) and restoring a snapshot (=1). Warm:
 *    image imported, its chunks cached, kernel and initramfs cached, accel probe cached and the snapshot
 *    made, all by an unrecorded first run of each variant. Medians and ratios to runc.
 * 2. Boot stages of a bare QEMU VM (squashfs root, no container) per kernel, cold and warm, from the host
 *    (spawn -> READY, START -> STARTED) and the guest init's CLOCK_BOOTTIME markers on the console
 *    (kernel: clock start -> init; stage 1: modules + root; stage 2: overlay; agent: channel + READY).
 *    Cold: the kernel, initramfs and root image dropped from the page cache first (dd iflag=nocache).
 *    Also the host RSS of the idle VMM (QEMU) after READY.
 * 3. The same bare VM restored from its snapshot (src/vm/qemu-snapshot.ts), per kernel, warm: QEMU's
 *    start (spawn -> QMP answers), loading the state, SETUP (clock, entropy, drives bound again, root and
 *    overlay mounted: host round trip, and the guest's markers for root and overlay), process start; the
 *    save's cost on the run that made the snapshot; idle RSS after a restore.
 *
 *   node dist/bench/vm-start.js [--n 5] [--boots 3] [--kernels debian,built]
 * Needs the built kernel (scripts/fixtures/guest-kernel.sh, or KINDLING_GUEST_KERNEL_DIR=<home>/kernel/built).
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { benchArgs } from "../src/bench/args.js";
import { mountsUnder } from "../src/host/mounts.js";
import { importImage } from "../src/image/import.js";
import { stopIdleShared } from "../src/lazy/index.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { type GuestKernelChoice, prepareGuestBoot } from "../src/vm/kernel.js";
import { bootQemuVm } from "../src/vm/qemu.js";
import { buildBusyboxTree, makeSquashfs } from "../test/helpers/images.js";
import { pidsNaming } from "../test/helpers/leftovers.js";

const REPO = fileURLToPath(new URL("../..", import.meta.url));
const KINDLING = path.join(REPO, "bin", "kindling");
const args = benchArgs("node dist/bench/vm-start.js [--n 5] [--boots 3] [--kernels debian,built]", {
  options: ["n", "boots", "kernels"],
});
const N = args.num("n", 5);
const BOOTS = args.num("boots", 3);
const KERNELS = (args.list("kernels") ?? ["debian", "built"]) as GuestKernelChoice[];
const BUILT =
  process.env.KINDLING_GUEST_KERNEL_DIR ?? path.join(REPO, ".cache", "guest-kernel", "kernel", "built");
const DEBIAN_CACHE = path.join(REPO, ".cache", "vm-test-home", "kernel", "current.json");

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

interface Variant {
  name: string;
  runtime: "runc" | "qemu";
  kernel?: GuestKernelChoice;
  snapshots?: boolean;
}
const VARIANTS = (
  [
    { name: "runc", runtime: "runc" },
    { name: "qemu, Debian kernel, boot", runtime: "qemu", kernel: "debian", snapshots: false },
    { name: "qemu, Debian kernel, restore", runtime: "qemu", kernel: "debian", snapshots: true },
    { name: "qemu, Kindling kernel, boot", runtime: "qemu", kernel: "built", snapshots: false },
    { name: "qemu, Kindling kernel, restore", runtime: "qemu", kernel: "built", snapshots: true },
  ] as Variant[]
).filter((v) => !v.kernel || KERNELS.includes(v.kernel));

/** One `kindling run` as a process; its wall time in ms. */
function runCli(home: KindlingHome, v: Variant): Promise<number> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const child = spawn(KINDLING, ["run", "--runtime", v.runtime, "--network", "none", "bb", "true"], {
      env: {
        ...process.env,
        KINDLING_HOME: home.root,
        KINDLING_GUEST_KERNEL: v.kernel ?? "auto",
        KINDLING_VM_SNAPSHOTS: v.snapshots ? "1" : "0",
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let err = "";
    child.stderr.on("data", (d) => {
      err += d;
    });
    child.on("close", (code) =>
      code === 0
        ? resolve(Number(process.hrtime.bigint() - t0) / 1e6)
        : reject(new Error(`${v.name}: exit ${code}: ${err.trim()}`)),
    );
  });
}

/** Guest markers: "kindling-init: [N ms] <what>" (CLOCK_BOOTTIME since the kernel's clock started). */
function markers(consoleLog: string): Record<string, number> {
  const at: Record<string, number> = {};
  const find = (key: string, re: RegExp) => {
    for (const m of consoleLog.matchAll(/kindling-init: \[(\d+) ms\] ([^\n]*)/g)) {
      if (re.test(m[2]) && at[key] === undefined) at[key] = Number(m[1]);
    }
  };
  find("init", /^stage1: (initramfs|root mounted by the kernel)/);
  find("root", /^stage1: root .* mounted|^stage1: root mounted by the kernel/);
  find("overlay", /^stage2: root is the overlay/);
  find("ready", /^agent: ready/);
  find("setup", /^setup: restored/);
  return at;
}

/**
 * The VMM's idle RSS split in two (/proc/<pid>/smaps): the guest's RAM (the mapping as large as the guest's
 * memory: pages the guest touched) and everything else, QEMU's own overhead (its code, heap, TCG's
 * translated code): the part Firecracker's <= 5 MiB promise is about.
 */
async function vmmMemory(pid: number, memoryMiB: number): Promise<{ rssMiB: number; overheadMiB: number }> {
  const smaps = await readFile(`/proc/${pid}/smaps`, "utf8");
  let total = 0;
  let guest = 0;
  let size = 0;
  for (const line of smaps.split("\n")) {
    const m = /^(Size|Rss):\s+(\d+) kB/.exec(line);
    if (!m) continue;
    if (m[1] === "Size") size = Number(m[2]);
    else {
      total += Number(m[2]);
      if (size === memoryMiB * 1024) guest += Number(m[2]);
    }
  }
  return { rssMiB: total / 1024, overheadMiB: (total - guest) / 1024 };
}

interface Stages {
  vmmStart: number;
  kernel: number;
  stage1: number;
  stage2: number;
  agentReady: number;
  processStart: number;
  total: number;
  rssMiB: number;
  overheadMiB: number;
}

async function bootStages(
  home: KindlingHome,
  kernel: GuestKernelChoice,
  rootImage: string,
  dir: string,
  cold: boolean,
): Promise<Stages> {
  const boot = await prepareGuestBoot(home, { kernel, boot: { root: "/dev/vda", tmpfsSize: "64m" } });
  if (cold) {
    for (const f of [boot.kernelPath, boot.initrdPath, rootImage]) {
      if (f) await exec("dd", [`if=${f}`, "iflag=nocache", "count=0"], { allowFailure: true });
    }
  }
  const vm = await bootQemuVm(
    {
      ...boot,
      memoryMiB: 256,
      vcpus: 1,
      drives: [{ id: "root", path: rootImage, readOnly: true, isRoot: true }],
      shares: [],
      stateDir: dir,
    },
    { home },
  );
  try {
    const { rssMiB, overheadMiB } = await vmmMemory(vm.pid, 256);
    const t0 = process.hrtime.bigint();
    const p = await vm.agent.start({ args: ["/bin/true"], env: ["PATH=/bin"], cwd: "/" });
    const processStart = Number(process.hrtime.bigint() - t0) / 1e6;
    await p.exited;
    const m = markers(await readFile(path.join(dir, "console.log"), "latin1"));
    if (m.init === undefined || m.ready === undefined)
      throw new Error(`no init markers in ${dir}/console.log`);
    return {
      vmmStart: vm.bootMs - m.ready,
      kernel: m.init,
      stage1: (m.root ?? m.init) - m.init,
      stage2: (m.overlay ?? m.root ?? m.init) - (m.root ?? m.init),
      agentReady: m.ready - (m.overlay ?? m.root ?? m.init),
      processStart,
      total: vm.bootMs + processStart,
      rssMiB,
      overheadMiB,
    };
  } finally {
    await vm.close();
  }
}

interface RestoreStages {
  vmmStart: number;
  restore: number;
  setup: number;
  guestRoot: number;
  guestOverlay: number;
  processStart: number;
  total: number;
  rssMiB: number;
  overheadMiB: number;
}

/** A bare VM from its snapshot (made first when missing: `save` is then that boot's save, else 0). */
async function restoreStages(
  home: KindlingHome,
  kernel: GuestKernelChoice,
  rootImage: string,
  dir: string,
): Promise<{ s: RestoreStages; kind: string; saveMs: number }> {
  const boot = await prepareGuestBoot(home, { kernel, boot: { root: "/dev/vda", tmpfsSize: "64m" } });
  const vm = await bootQemuVm(
    {
      ...boot,
      memoryMiB: 256,
      vcpus: 1,
      drives: [{ id: "root", path: rootImage, readOnly: true, isRoot: true }],
      shares: [],
      stateDir: dir,
      agent: "virtio-serial",
      snapshots: home.snapshots,
    },
    { home },
  );
  try {
    const { rssMiB, overheadMiB } = await vmmMemory(vm.pid, 256);
    const t0 = process.hrtime.bigint();
    const p = await vm.agent.start({ args: ["/bin/true"], env: ["PATH=/bin"], cwd: "/" });
    const processStart = Number(process.hrtime.bigint() - t0) / 1e6;
    await p.exited;
    const m = markers(await readFile(path.join(dir, "console.log"), "latin1"));
    const st = vm.stages;
    const s: RestoreStages = {
      vmmStart: st.vmmStart ?? 0,
      restore: st.restore ?? 0,
      setup: st.setup ?? 0,
      guestRoot: m.setup !== undefined && m.root !== undefined ? m.root - m.setup : 0,
      guestOverlay: m.root !== undefined && m.overlay !== undefined ? m.overlay - m.root : 0,
      processStart,
      total: vm.bootMs + processStart,
      rssMiB,
      overheadMiB,
    };
    return { s, kind: vm.startKind, saveMs: st.save ?? 0 };
  } finally {
    await vm.close();
  }
}

async function main(): Promise<void> {
  if (KERNELS.includes("built") && (await readdir(BUILT).catch(() => [])).length === 0) {
    throw new Error(
      `no built guest kernel in ${BUILT}: run bash scripts/fixtures/guest-kernel.sh .cache/fixtures`,
    );
  }
  const tmp = await mkdtemp(path.join(tmpdir(), "kindling-bench-vm-"));
  try {
    const home = new KindlingHome(path.join(tmp, "home")).ensure();
    await symlink(BUILT, path.join(home.kernel, "built")).catch(() => {});
    // Debian's kernel from the test cache when there (no apt download); else fetched on first use
    await symlink(DEBIAN_CACHE, path.join(home.kernel, "current.json")).catch(() => {});
    await importImage(home, `${path.join(REPO, ".cache", "fixtures", "busybox-oci")}:latest`, { name: "bb" });
    const load = (await readFile("/proc/loadavg", "utf8")).split(" ").slice(0, 3).join(" ");
    console.log(`# vm-start: load average ${load}, ${N} rounds end to end, ${BOOTS} boots per stage row`);

    // 1. end to end, interleaved, after one unrecorded warm-up run per variant
    for (const v of VARIANTS) await runCli(home, v);
    const times = new Map(VARIANTS.map((v) => [v.name, [] as number[]]));
    for (let r = 0; r < N; r++) {
      for (let i = 0; i < VARIANTS.length; i++) {
        const v = VARIANTS[(i + r) % VARIANTS.length];
        times.get(v.name)!.push(await runCli(home, v));
      }
    }
    const runc = median(times.get("runc")!);
    console.log("\n| kindling run (warm, --network none, `true`) | median ms | vs runc |\n|---|---|---|");
    for (const v of VARIANTS) {
      const m = median(times.get(v.name)!);
      console.log(`| ${v.name} | ${m.toFixed(0)} | ${(m / runc).toFixed(2)}x |`);
    }

    // 2. boot stages, cold then warm, kernels interleaved
    await buildBusyboxTree(path.join(tmp, "tree"));
    const rootImage = path.join(tmp, "root.sqfs");
    await makeSquashfs(path.join(tmp, "tree"), rootImage);
    const rows: { kernel: GuestKernelChoice; cold: boolean; s: Stages }[] = [];
    let n = 0;
    for (let b = 0; b < BOOTS; b++) {
      for (const cold of [true, false]) {
        for (const kernel of KERNELS) {
          const dir = path.join(tmp, `vm-${n++}`);
          await mkdir(dir);
          rows.push({ kernel, cold, s: await bootStages(home, kernel, rootImage, dir, cold) });
        }
      }
    }
    const keys: (keyof Stages)[] = [
      "vmmStart",
      "kernel",
      "stage1",
      "stage2",
      "agentReady",
      "processStart",
      "total",
      "rssMiB",
      "overheadMiB",
    ];
    console.log(
      "\n| bare VM boot (median ms) | VMM start | kernel | init stage 1 | init stage 2 | agent READY | process start | total | idle QEMU RSS MiB | of it not guest RAM MiB |",
    );
    console.log("|---|---|---|---|---|---|---|---|---|---|");
    for (const kernel of KERNELS) {
      for (const cold of [true, false]) {
        const sel = rows.filter((r) => r.kernel === kernel && r.cold === cold).map((r) => r.s);
        const cells = keys.map((k) => median(sel.map((s) => s[k])).toFixed(0));
        console.log(`| ${kernel}, ${cold ? "cold" : "warm"} | ${cells.join(" | ")} |`);
      }
    }

    // 3. restores of the same VM (the first of each kernel makes the snapshot), kernels interleaved
    const restores: { kernel: GuestKernelChoice; s: RestoreStages }[] = [];
    const saves = new Map<GuestKernelChoice, number>();
    for (let b = 0; b <= BOOTS; b++) {
      for (const kernel of KERNELS) {
        const dir = path.join(tmp, `vm-${n++}`);
        await mkdir(dir);
        const r = await restoreStages(home, kernel, rootImage, dir);
        if (r.kind === "snapshot-saved") saves.set(kernel, r.saveMs);
        else if (r.kind === "restored") restores.push({ kernel, s: r.s });
        else throw new Error(`${kernel}: the VM neither saved nor restored a snapshot (${r.kind})`);
      }
    }
    const rkeys: (keyof RestoreStages)[] = [
      "vmmStart",
      "restore",
      "setup",
      "guestRoot",
      "guestOverlay",
      "processStart",
      "total",
      "rssMiB",
      "overheadMiB",
    ];
    console.log(
      "\n| bare VM restore (median ms, warm) | VMM start (spawn -> QMP) | load state | SETUP round trip | of it: guest drives + root | of it: guest overlay | process start | total | idle QEMU RSS MiB | of it not guest RAM MiB | save (first run, once) |",
    );
    console.log("|---|---|---|---|---|---|---|---|---|---|---|");
    for (const kernel of KERNELS) {
      const sel = restores.filter((r) => r.kernel === kernel).map((r) => r.s);
      if (sel.length === 0) continue;
      const cells = rkeys.map((k) => median(sel.map((s) => s[k])).toFixed(0));
      console.log(`| ${kernel} | ${cells.join(" | ")} | ${saves.get(kernel)?.toFixed(0) ?? "-"} |`);
    }
  } finally {
    await stopIdleShared(new KindlingHome(path.join(tmp, "home"))); // the image's lazy daemon
    await releaseLeftovers(tmp);
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * A shared lazy daemon that still counts a user (seen once at 07:53 under load: two daemons kept their
 * mounts after stopIdleShared) must not fail the benchmark's cleanup: kill what names the temp dir and
 * detach its mounts, newest first.
 */
async function releaseLeftovers(tmp: string): Promise<void> {
  const mounts = await mountsUnder(tmp);
  if (mounts.length === 0) return;
  for (const pid of await pidsNaming(`${tmp}/`)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone meanwhile
    }
  }
  for (const m of mounts.reverse()) await exec("umount", ["-l", m.mountPoint], { allowFailure: true });
  console.error(`# cleanup: ${mounts.length} mount(s) under ${tmp} were still there after stopIdleShared`);
}

await main();
