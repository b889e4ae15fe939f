/**
 * How many bytes a first run fetches under each chunking: the image is served lazily (src/lazy, no
 * readahead, no prefetch) from a source that records every chunk fetched, mounted read-only via a
 * loop device, and a small workload runs in it. Each spec gets a fresh home, so every cache is cold.
 *   node dist/bench/lazy-granularity.js [rootfs.tar]   (default .cache/fixtures/debian-minbase.tar)
 */
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import path from "node:path";
import { buildImage } from "../src/image/build.js";
import { openLazyImage } from "../src/lazy/index.js";
import { readBlob } from "../src/store/blobs.js";
import { readBlockIndex } from "../src/store/blockindex.js";
import { type ChunkingSpec, fastcdcSpec } from "../src/store/chunker.js";
import { LocalChunkSource } from "../src/store/local.js";
import type { ChunkSource, Digest } from "../src/store/types.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";

const tar = process.argv[2] ?? ".cache/fixtures/debian-minbase.tar";
const KiB = 1024;
const { putBlob } = await import("../src/store/blobs.js");
const specs: ChunkingSpec[] = [
  { algorithm: "fixed", avgSize: 512 * KiB },
  { algorithm: "fixed", avgSize: 4096 * KiB },
  ...[64, 128, 256, 512, 1024].map((k) => fastcdcSpec(k * KiB)),
];
const workloads: { label: string; cmd: string[]; readahead?: boolean }[] = [
  { label: "cat /etc/debian_version", cmd: ["cat", "etc/debian_version"] },
  { label: "chroot: ls -l /usr/bin", cmd: ["chroot", ".", "/bin/ls", "-l", "/usr/bin"] },
  { label: "chroot: dpkg -l", cmd: ["chroot", ".", "/usr/bin/dpkg", "-l"] },
  // Everything, with the lazy file's default readahead: per-chunk overhead shows as time.
  { label: "read all (tar -c . | cat)", cmd: ["sh", "-c", "tar -cf - . | cat >/dev/null"], readahead: true },
];

class Recording implements ChunkSource {
  readonly description = "recording source";
  readonly fetched = new Map<Digest, number>();
  constructor(private readonly inner: ChunkSource) {}
  async fetch(digest: Digest, length: number, signal?: AbortSignal): Promise<Buffer> {
    this.fetched.set(digest, length);
    return this.inner.fetch(digest, length, signal);
  }
}

const work = await mkdtemp("/var/tmp/kindling-bench-lazy-");
try {
  console.log(`image: ${tar}; ${new Date().toISOString()}`);
  console.log(
    `| chunking | avg size | image (MB) | chunks | ${workloads.map((w) => `${w.label}${w.readahead ? "" : " (MB)"}`).join(" | ")} |`,
  );
  console.log(`| --- | ---: | ---: | ---: |${workloads.map(() => " ---: |").join("")}`);
  for (const spec of specs) {
    const store = new KindlingHome(path.join(work, "store")).ensure();
    const rec = await buildImage(store, {
      name: "img",
      layers: [{ path: tar }],
      configJson: null,
      origin: { kind: "local" },
      progress: false,
      chunking: spec,
    });
    const index = await readBlockIndex(store, rec.digest);
    const cells: string[] = [];
    for (const w of workloads) {
      // A fresh home per run: no chunk in its cache, a new lazy file (cold page cache).
      const home = new KindlingHome(path.join(work, `h-${cells.length}`)).ensure();
      await putBlob(home, await readBlob(store, rec.digest));
      const source = new Recording(new LocalChunkSource(store));
      const lazy = await openLazyImage(
        home,
        rec,
        source,
        w.readahead ? {} : { readaheadChunks: 0, prefetch: false },
      );
      const mnt = path.join(work, "mnt");
      await mkdir(mnt, { recursive: true });
      let loop = "";
      let secs = 0;
      try {
        loop = (await exec("losetup", ["-r", "--direct-io=on", "--show", "-f", lazy.path])).stdout.trim();
        await exec("mount", ["-t", "squashfs", "-o", "ro", loop, mnt]);
        const t0 = process.hrtime.bigint();
        await exec(w.cmd[0]!, w.cmd.slice(1), { cwd: mnt });
        secs = Number(process.hrtime.bigint() - t0) / 1e9;
      } finally {
        await exec("umount", [mnt], { allowFailure: true });
        if (loop) await exec("losetup", ["-d", loop], { allowFailure: true });
        await lazy.close();
      }
      const bytes = [...source.fetched.values()].reduce((a, b) => a + b, 0);
      cells.push(
        w.readahead
          ? `${secs.toFixed(2)} s`
          : `${(bytes / 1e6).toFixed(2)} (${((100 * bytes) / rec.blockSize).toFixed(1)}%)`,
      );
      await rm(home.root, { recursive: true, force: true });
    }
    console.log(
      `| ${spec.algorithm} | ${spec.avgSize / KiB} KiB | ${(rec.blockSize / 1e6).toFixed(1)} | ${index.chunks.length} | ${cells.join(" | ")} |`,
    );
    await rm(store.root, { recursive: true, force: true });
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
