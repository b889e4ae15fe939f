/**
 * The note's host-side rootfs preparation, measured on its own (no VM boot): for one image, in a
 * fresh home that pulled it lazily from a registry on 127.0.0.1 (cold), then again (warm):
 *   lazy-file   what a VM's `lazy` rootfs needs on the host: the lazy FUSE file (daemon up)
 *   lazy-mount  what runc's `lazy` needs: + ro loop, squashfs mount, overlay (src/runtime/rootfs.ts)
 *   lazy-shared lazy-mount with the lazy file already open (one daemon per image, shared by its
 *               containers, as DESIGN.md's mnt/ layout says): loop, squashfs and overlay only
 *   squashfs    the note: overlay merged dir + bind mounts, then `mksquashfs -comp zstd -noappend
 *               -no-recovery -always-use-fragments` (mksquashfs's default zstd level, 15)
 *   copy        the old way: size, mkfs.ext4, mount, `cp -a` of the merged dir and the mounts, umount
 * Interleaved (the strategy order rotates each repetition), medians, and per-container disk bytes.
 *   node dist/bench/note-prep.js [--image small|large|busybox] [--reps 3] [--binds 0] [--json]
 *                                [--strategies lazy-file,lazy-mount,lazy-shared,squashfs,copy]
 */
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import path from "node:path";
import { benchArgs } from "../src/bench/args.js";
import { makeBindMounts } from "../src/bench/binds.js";
import { diskUsage } from "../src/bench/disk.js";
import { formatBytes, formatMs, formatPercent } from "../src/bench/format.js";
import { coldHome, releaseHome } from "../src/bench/homes.js";
import { IMAGES, publishImage } from "../src/bench/images.js";
import { median, table } from "../src/bench/index.js";
import { startBenchRegistry } from "../src/bench/registry.js";
import { mount, unmount } from "../src/host/mounts.js";
import { imageStats } from "../src/lazy/index.js";
import { resolveImage } from "../src/runtime/image.js";
import { FileBlockImage, mountOverlayRootfs } from "../src/runtime/rootfs.js";
import { RunDir } from "../src/runtime/rundir.js";
import type { VolumeSpec } from "../src/runtime/types.js";
import { loadImage } from "../src/store/catalog.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { closeAllScopes, Scope } from "../src/util/scope.js";

const args = benchArgs(
  "node dist/bench/note-prep.js [--image small|large|busybox] [--reps 3] [--binds 0] [--strategies a,b] [--json]",
  { options: ["image", "reps", "binds", "strategies"], switches: ["json"] },
);
const IMAGE = args.str("image", "large");
const REPS = args.num("reps", 3);
const BINDS = args.num("binds", 0);
const JSON_OUT = args.has("json");
const ALL = ["lazy-file", "lazy-mount", "lazy-shared", "squashfs", "copy"] as const;
type Strategy = (typeof ALL)[number];
const STRATEGIES = (args.list("strategies") ?? ALL) as Strategy[];

interface Row {
  strategy: Strategy;
  cache: "cold" | "warm";
  prepMs: number;
  fetchedBytes: number;
  diskBytes: number;
  blockSize: number;
}

const now = () => performance.now();
const log = (s: string) => process.stderr.write(`${s}\n`);

/** Bind mounts into the merged dir, as the note does before mksquashfs / cp (each undone by scope). */
async function bindInto(merged: string, volumes: VolumeSpec[], scope: Scope): Promise<void> {
  for (const v of volumes) {
    const target = path.join(merged, v.destination);
    await mkdir(target, { recursive: true });
    await mount("none", v.source, target, "bind");
    scope.defer(`bind ${target}`, () => unmount(target));
  }
}

/** One preparation; returns its time and the bytes it leaves on disk per container. */
async function prepareOnce(
  home: KindlingHome,
  ref: string,
  strategy: Strategy,
  volumes: VolumeSpec[],
): Promise<{ prepMs: number; diskBytes: number }> {
  return Scope.with(async (scope) => {
    const image = await resolveImage(home, ref);
    const runDir = await RunDir.create(home, scope, "bench", image.name);
    const t0 = now();
    if (strategy === "lazy-shared") {
      // The daemon is up before the clock starts: only the per-container mounts are timed.
      const file = await image.blockImage.open();
      scope.defer("lazy file", () => file.close());
      const t1 = now();
      await mountOverlayRootfs(runDir, scope, new FileBlockImage(file.path), runDir.file("merged"));
      const prepMs = now() - t1;
      return { prepMs, diskBytes: await diskUsage(runDir.path) };
    }
    if (strategy === "lazy-file") {
      const file = await image.blockImage.open();
      scope.defer("lazy file", () => file.close());
      const prepMs = now() - t0;
      return { prepMs, diskBytes: await diskUsage(runDir.path) };
    }
    const rootfs = await mountOverlayRootfs(runDir, scope, image.blockImage, runDir.file("merged"));
    if (strategy === "lazy-mount") {
      const prepMs = now() - t0;
      return { prepMs, diskBytes: await diskUsage(runDir.path) };
    }
    // Sized before the binds go in; no -x: overlayfs reports a lower file's own st_dev.
    const used =
      strategy === "copy" ? Number((await exec("du", ["-sb", rootfs.merged])).stdout.split(/\s/)[0]) : 0;
    await bindInto(rootfs.merged, volumes, scope);
    if (strategy === "squashfs") {
      const out = runDir.file("rootfs.squashfs");
      await exec("mksquashfs", [
        rootfs.merged,
        out,
        "-comp",
        "zstd",
        "-noappend",
        "-no-recovery",
        "-always-use-fragments",
        "-quiet",
        "-no-progress",
      ]);
      const prepMs = now() - t0;
      return { prepMs, diskBytes: await diskUsage(runDir.path) };
    }
    // copy: size it as the note does (data + 20% + 64 MiB), ext4, loop mount, cp -a, unmount.
    const bindBytes = volumes.length * (1 << 20);
    const img = runDir.file("rootfs.ext4");
    await exec("truncate", ["-s", String(Math.ceil((used + bindBytes) * 1.2) + (64 << 20)), img]);
    await exec("mkfs.ext4", ["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", img]);
    const mnt = runDir.file("ext4");
    await mkdir(mnt);
    await exec("mount", ["-o", "loop", img, mnt]);
    try {
      await exec("cp", ["-a", `${rootfs.merged}/.`, mnt]);
    } finally {
      await exec("umount", [mnt]);
    }
    const prepMs = now() - t0;
    return { prepMs, diskBytes: await diskUsage(runDir.path) };
  });
}

async function fetched(home: KindlingHome, ref: string): Promise<number> {
  return (await imageStats(home, (await loadImage(home, ref)).digest)).bytesFetched;
}

async function main(): Promise<void> {
  const img = IMAGES[IMAGE];
  if (!img) throw new Error(`--image: one of ${Object.keys(IMAGES).join(", ")}`);
  const unknown = STRATEGIES.filter((s) => !ALL.includes(s));
  if (unknown.length > 0) throw new Error(`--strategies: unknown ${unknown.join(", ")}`);
  const work = await mkdtemp("/var/tmp/kindling-note-prep-");
  const rows: Row[] = [];
  try {
    await Scope.with(async (scope) => {
      scope.defer("work dir", () => rm(work, { recursive: true, force: true }));
      const registry = await startBenchRegistry(work);
      scope.defer("registry", () => registry.stop());
      const source = new KindlingHome(path.join(work, "source")).ensure();
      scope.defer("source home", () => releaseHome(source));
      log(`note-prep: publishing ${IMAGE}`);
      const ref = await publishImage(source, img, registry.host);
      const blockSize = (await loadImage(source, img.name)).blockSize;
      const volumes = await makeBindMounts(work, BINDS);
      for (let rep = 0; rep < REPS; rep++) {
        for (let i = 0; i < STRATEGIES.length; i++) {
          const strategy = STRATEGIES[(i + rep) % STRATEGIES.length]!;
          const home = await coldHome(work, ref);
          try {
            for (const cache of ["cold", "warm"] as const) {
              const before = await fetched(home, ref);
              const m = await prepareOnce(home, ref, strategy, volumes);
              const row = {
                strategy,
                cache,
                ...m,
                fetchedBytes: (await fetched(home, ref)) - before,
                blockSize,
              };
              log(
                `note-prep: [${rep + 1}/${REPS}] ${strategy} ${cache}: ${formatMs(row.prepMs)} ms, fetched ${formatBytes(row.fetchedBytes)}, disk ${formatBytes(row.diskBytes)}`,
              );
              rows.push(row);
            }
          } finally {
            await releaseHome(home);
          }
        }
      }
    });
  } finally {
    await rm(work, { recursive: true, force: true }).catch(() => {});
  }
  const med: Row[] = [];
  for (const strategy of STRATEGIES) {
    for (const cache of ["cold", "warm"] as const) {
      const group = rows.filter((r) => r.strategy === strategy && r.cache === cache);
      if (group.length === 0) continue;
      med.push({
        strategy,
        cache,
        prepMs: median(group.map((r) => r.prepMs)),
        fetchedBytes: median(group.map((r) => r.fetchedBytes)),
        diskBytes: median(group.map((r) => r.diskBytes)),
        blockSize: group[0]!.blockSize,
      });
    }
  }
  if (JSON_OUT) {
    process.stdout.write(`${JSON.stringify(med, null, 2)}\n`);
    return;
  }
  const lazyWarm = med.find((r) => r.strategy === "lazy-file" && r.cache === "warm")?.prepMs ?? Number.NaN;
  console.log(
    `host-side rootfs prep, image ${IMAGE} (block image ${formatBytes(med[0]?.blockSize)}), ${BINDS} bind mounts, median of ${REPS}`,
  );
  console.log(`command: node dist/bench/note-prep.js ${process.argv.slice(2).join(" ")}`.trimEnd());
  console.log(
    table(
      [
        "strategy",
        "cache",
        "prepMs",
        "x lazy-file warm",
        "fetchedBytes",
        "fetched/image",
        "diskBytes",
        "disk/image",
      ],
      med.map((r) => [
        r.strategy,
        r.cache,
        formatMs(r.prepMs),
        `${(r.prepMs / lazyWarm).toFixed(1)}x`,
        formatBytes(r.fetchedBytes),
        formatPercent(r.fetchedBytes, r.blockSize),
        formatBytes(r.diskBytes),
        formatPercent(r.diskBytes, r.blockSize),
      ]),
    ),
  );
}

// Ctrl-C: release the registry, homes, mounts and daemons before exiting.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => void closeAllScopes().finally(() => process.exit(130)));
}
await main();
