/**
 * Measures -v packing (docs/rootfs-strategies.md): prep time (host-side: building the drives) and boot time
 * (VMM spawn to agent READY) for `--rootfs lazy` with 10 and 100 mounts, packed vs one drive per mount.
 * Also each --rootfs strategy on debian-minbase. Skipped unless asked (they boot many VMs):
 *   KINDLING_MEASURE=packing|strategies|1 KINDLING_MEASURE_REPS=5 node --test dist/test/vm-runtime-packing.test.js
 * Always checks that per-mount beyond QEMU's virtio-mmio slots fails with the limit before anything boots.
 */
import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { importImage } from "../src/image/import.js";
import { resolveImage } from "../src/runtime/image.js";
import { runContainer } from "../src/runtime/lifecycle.js";
import { parseRunOptions } from "../src/runtime/options.js";
import { RunDir } from "../src/runtime/rundir.js";
import { runtimeFor } from "../src/runtime/runtimes.js";
import type { Container, Runtime } from "../src/runtime/types.js";
import { prepareRootfs } from "../src/runtime/vm-rootfs/strategies.js";
import { Scope } from "../src/util/scope.js";
import { FIRECRACKER_TRAITS } from "../src/vm/firecracker/backend.js";
import { fixture } from "./helpers/fixtures.js";
import { leftovers } from "./helpers/leftovers.js";
import { readAll } from "./helpers/streams.js";
import { type VmTestHome, vmTestHome } from "./helpers/vm-image.js";

/** KINDLING_MEASURE=1 (both), packing, or strategies. */
const MEASURE = process.env.KINDLING_MEASURE ?? "";
const measures = (what: string) => MEASURE === "1" || MEASURE === what;
const REPS = Number(process.env.KINDLING_MEASURE_REPS ?? 3);
let t: VmTestHome;

before(async () => {
  t = await vmTestHome();
});
after(async () => {
  assert.deepEqual(await leftovers(t.home.root), []);
  await t.cleanup();
});

/** n mounts, half ro and half rw, each a directory with 4 small files. */
async function volumes(n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const d = path.join(t.tmp, `vol${n}`, String(i));
    await mkdir(d, { recursive: true });
    for (let f = 0; f < 4; f++) await writeFile(path.join(d, `f${f}`), `${i}/${f}\n`.repeat(100));
    out.push(`${d}:/v/${i}${i % 2 === 0 ? ":ro" : ""}`);
  }
  return out;
}

interface Other {
  image: string;
  rootfs: "lazy" | "squashfs" | "copy" | "virtiofs";
  volume: string[];
  command: string;
}

async function once(n: number, packing: "pack" | "per-mount", other?: Other) {
  const image = other?.image ?? "ml";
  const options = await parseRunOptions(image, ["/bin/sh", "-c", other?.command ?? "ls /v | wc -l"], {
    runtime: "qemu",
    network: "none", // the drive-slot tests count drives; a NIC would take a slot too
    rootfs: other?.rootfs,
    volume: other?.volume ?? (await volumes(n)),
    mountPacking: packing,
  });
  const inner = await runtimeFor(options);
  let container: Container | undefined;
  const runtime: Runtime = {
    name: inner.name,
    checkHost: () => inner.checkHost(),
    prepare: async (req, scope) => {
      container = await inner.prepare(req, scope);
      return container;
    },
  };
  const start = Date.now();
  const handle = runContainer({
    home: t.home,
    options,
    image: await resolveImage(t.home, image),
    runtime,
    stdio: { stdout: "pipe", stderr: "pipe" },
  });
  const s = await handle.started;
  const [stdout, , result] = await Promise.all([readAll(s.stdout), readAll(s.stderr), handle.result]);
  assert.equal(result.status, 0);
  if (!other) assert.equal(stdout.trim(), String(n));
  return { prepMs: container!.prepMs!, bootMs: container!.bootMs!, totalMs: Date.now() - start };
}

/** prepareRootfs alone (vmm firecracker: no QEMU slot limit), ms. */
async function prepOnly(n: number, packing: "pack" | "per-mount"): Promise<number> {
  const options = await parseRunOptions("ml", [], { runtime: "qemu", volume: await volumes(n) });
  const image = await resolveImage(t.home, "ml");
  return Scope.with(async (scope) => {
    const runDir = await RunDir.create(t.home, scope, "measure", "ml");
    const start = Date.now();
    await prepareRootfs("lazy", {
      runDir,
      scope,
      image,
      volumes: options.volumes,
      vmm: { name: "firecracker", traits: FIRECRACKER_TRAITS },
      memoryMiB: 512,
      packing,
      nics: 0,
      warn: () => {},
    });
    return Date.now() - start;
  });
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

test("packing: prep and boot times for 10 and 100 mounts", { skip: !measures("packing") }, async () => {
  const rows: string[] = [
    "| mounts | packing | drives | prep ms | boot ms | total ms |",
    "|---|---|---|---|---|---|",
  ];
  for (const n of [10, 100]) {
    for (const packing of ["pack", "per-mount"] as const) {
      if (packing === "per-mount" && n > 20) {
        // QEMU refuses it; the host-side cost is measured alone (as Firecracker would need it)
        const preps = [];
        for (let i = 0; i < REPS; i++) preps.push(await prepOnly(n, packing));
        rows.push(`| ${n} | ${packing} | ${n + 1} | ${median(preps)} | QEMU: refused (23 devices) | |`);
        continue;
      }
      const runs = [];
      for (let i = 0; i < REPS; i++) runs.push(await once(n, packing));
      const drives = packing === "pack" ? 3 : n + 1;
      rows.push(
        `| ${n} | ${packing} | ${drives} | ${median(runs.map((r) => r.prepMs))} | ${median(runs.map((r) => r.bootMs))} | ${median(runs.map((r) => r.totalMs))} |`,
      );
    }
  }
  process.stdout.write(`\n${rows.join("\n")}\n(median of ${REPS})\n`);
});

test("strategies: prep and boot times on debian-minbase (206 MB)", {
  skip: !measures("strategies"),
}, async () => {
  await importImage(t.home, await fixture("debian-minbase.tar"), { name: "deb" });
  const ro = path.join(t.tmp, "deb-ro");
  const rw = path.join(t.tmp, "deb-rw");
  await mkdir(ro, { recursive: true });
  await mkdir(rw, { recursive: true });
  await writeFile(path.join(ro, "f"), "x\n");
  const rows = ["| strategy | prep ms | boot ms | total ms |", "|---|---|---|---|"];
  for (const rootfs of ["lazy", "squashfs", "copy", "virtiofs"] as const) {
    const runs = [];
    for (let i = 0; i < Math.min(REPS, 3); i++) {
      runs.push(
        await once(0, "pack", {
          image: "deb",
          rootfs,
          volume: [`${ro}:/ro:ro`, `${rw}:/rw`],
          command: "cat /etc/debian_version",
        }),
      );
    }
    rows.push(
      `| ${rootfs} | ${median(runs.map((r) => r.prepMs))} | ${median(runs.map((r) => r.bootMs))} | ${median(runs.map((r) => r.totalMs))} |`,
    );
  }
  process.stdout.write(`\n${rows.join("\n")}\n(median of ${Math.min(REPS, 3)}; one ro and one rw mount)\n`);
});

test("per-mount at the limit: 21 mounts + root = 22 drives + the agent port = 23 devices boot", async () => {
  const r = await once(21, "per-mount");
  assert.ok(r.bootMs > 0);
});

test("per-mount beyond the virtio-mmio slots fails with the limit, and leaves nothing", async () => {
  await assert.rejects(
    once(30, "per-mount"),
    /too many devices for QEMU microvm: 31 drives.*--mount-packing pack/,
  );
  assert.deepEqual(await leftovers(t.home.root), []);
});
