/**
 * runc start benchmark (not a test): `echo` with runc on the image's SquashFS through a read-only
 * loop device under an overlay (what `kindling run` uses) against runc on a plain directory holding
 * the same tree; interleaved rounds, medians and ratios. A third row is `kindling run` end to end
 * (stale-run check, loop + mounts, bundle, runc, teardown) through the API.
 *   node dist/bench/runc-start.js [--n 30] [--image NAME|FILE.sqfs] [--runtime runc|runsc]
 * (NAME: an image in $KINDLING_HOME). With --runtime runsc, gVisor (ptrace) runs all three.
 * Without --image, a busybox SquashFS is built; with an image name the lower layer is the lazy FUSE
 * file (warm: after the first round its chunks are cached).
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { benchArgs } from "../src/bench/args.js";
import { config } from "../src/config/index.js";
import { isPathRef, resolveImage } from "../src/runtime/image.js";
import { runContainer } from "../src/runtime/lifecycle.js";
import { buildOciSpec } from "../src/runtime/oci.js";
import { RUNC, RUNSC } from "../src/runtime/oci-runtime.js";
import { parseRunOptions } from "../src/runtime/options.js";
import { mountOverlayRootfs } from "../src/runtime/rootfs.js";
import { RunDir } from "../src/runtime/rundir.js";
import { getRuntime } from "../src/runtime/runtimes.js";
import { findBinary } from "../src/runtime/which.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { Scope } from "../src/util/scope.js";
import { buildBusyboxTree, makeSquashfs } from "../test/helpers/images.js";
import { readAll } from "../test/helpers/streams.js";

const args = benchArgs(
  "node dist/bench/runc-start.js [--n 30] [--image NAME|FILE.sqfs] [--runtime runc|runsc]",
  { options: ["n", "image", "runtime"] },
);
const N = args.num("n", 30);
const IMAGE = args.get("image");
const RUNTIME_ARG = args.str("runtime", "runc");
if (RUNTIME_ARG !== "runc" && RUNTIME_ARG !== "runsc") throw new Error("--runtime: runc or runsc");
const RUNTIME: "runc" | "runsc" = RUNTIME_ARG;
const FLAVOR = RUNTIME === "runc" ? RUNC : RUNSC;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

async function main(): Promise<void> {
  const runc = await findBinary(RUNTIME);
  if (!runc) throw new Error(`${RUNTIME} is not installed`);
  const tmp = await mkdtemp(path.join(tmpdir(), "kindling-bench-runc-"));
  // An image name is looked up (and run) in $KINDLING_HOME; a file or the built busybox in a temp home.
  const home =
    IMAGE && !isPathRef(IMAGE) ? new KindlingHome(config().home) : new KindlingHome(path.join(tmp, "home"));
  let imageRef = IMAGE;
  if (!imageRef) {
    await buildBusyboxTree(path.join(tmp, "tree"));
    imageRef = path.join(tmp, "busybox.sqfs");
    await makeSquashfs(path.join(tmp, "tree"), imageRef);
  }
  const image = await resolveImage(home, imageRef);

  await Scope.with(async (scope) => {
    scope.defer("bench dir", () => rm(tmp, { recursive: true, force: true }));
    // The same tree as a plain directory.
    const plain = path.join(tmp, "plain");
    const file = await image.blockImage.open();
    try {
      await exec("unsquashfs", ["-q", "-n", "-d", plain, file.path]);
    } finally {
      await file.close();
    }
    // The overlay on squashfs via loop, mounted once: the per-start cost is runc's alone.
    const runDir = await RunDir.create(home, scope, RUNTIME, image.name);
    const overlayBundle = runDir.file("bundle");
    await mountOverlayRootfs(runDir, scope, image.blockImage, `${overlayBundle}/rootfs`);
    const plainBundle = path.join(tmp, "plain-bundle");
    const nofile = 1024;
    const process_ = {
      args: ["echo", "hi"],
      env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
      cwd: "/",
      uid: 0,
      gid: 0,
      additionalGids: [],
    };
    await exec("mkdir", ["-p", plainBundle]);
    for (const [bundle, rootfs] of [
      [overlayBundle, "rootfs"],
      [plainBundle, plain],
    ]) {
      const spec = buildOciSpec({ process: process_, hostname: "bench", rootfs, volumes: [], nofile });
      await writeFile(path.join(bundle, "config.json"), JSON.stringify(spec));
    }
    const state = path.join(tmp, "runc-state");
    let seq = 0;
    const runcEcho = async (bundle: string) => {
      const t0 = process.hrtime.bigint();
      const r = await exec(runc, [
        "--root",
        state,
        ...FLAVOR.globalArgs,
        "run",
        "--bundle",
        bundle,
        `bench-${process.pid}-${seq++}`,
      ]);
      const t = ms(t0);
      if (r.stdout !== "hi\n") throw new Error(`unexpected output: ${r.stdout}`);
      return t;
    };
    const options = await parseRunOptions(imageRef!, ["echo", "hi"], { runtime: RUNTIME });
    const kindlingEcho = async () => {
      const t0 = process.hrtime.bigint();
      const h = runContainer({
        home,
        options,
        image,
        runtime: getRuntime(RUNTIME, "lazy"),
        stdio: { stdout: "pipe", stderr: "pipe" },
      });
      const s = await h.started;
      const [out] = await Promise.all([readAll(s.stdout), readAll(s.stderr), h.result]);
      const t = ms(t0);
      if (out !== "hi\n") throw new Error(`unexpected output: ${out}`);
      return t;
    };

    // One warm-up of each (page cache, lazy chunks), then interleaved rounds.
    await runcEcho(plainBundle);
    await runcEcho(overlayBundle);
    await kindlingEcho();
    const times = { dir: [] as number[], overlay: [] as number[], e2e: [] as number[] };
    for (let i = 0; i < N; i++) {
      times.dir.push(await runcEcho(plainBundle));
      times.overlay.push(await runcEcho(overlayBundle));
      times.e2e.push(await kindlingEcho());
    }
    const dir = median(times.dir);
    const row = (label: string, xs: number[]) =>
      `  ${label.padEnd(60)} ${median(xs).toFixed(1).padStart(7)} ms   ${(median(xs) / dir).toFixed(2)}x`;
    console.log(
      `${RUNTIME} \`echo hi\` start latency, median of ${N} interleaved rounds, image ${image.name}`,
    );
    console.log(`  command: node dist/bench/runc-start.js ${process.argv.slice(2).join(" ")}`.trimEnd());
    console.log(row(`${RUNTIME} run, plain directory rootfs`, times.dir));
    console.log(row(`${RUNTIME} run, overlay on squashfs via ro loop (mounted)`, times.overlay));
    console.log(row(`kindling run end to end (API: mounts+bundle+${RUNTIME}+cleanup)`, times.e2e));
  });
}

await main();
