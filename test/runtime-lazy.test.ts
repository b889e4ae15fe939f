import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { mountsUnder } from "../src/host/mounts.js";
import { listPids, readCmdline } from "../src/host/proc.js";
import { importImage } from "../src/image/import.js";
import { removeImage } from "../src/image/remove.js";
import { imageStats, liveDaemonPids } from "../src/lazy/index.js";
import { resolveImage } from "../src/runtime/image.js";
import type { RawRunFlags } from "../src/runtime/options.js";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import { readBlockIndex } from "../src/store/blockindex.js";
import { findImage, loadImage } from "../src/store/catalog.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { runCli, spawnCliUntil } from "./helpers/cli.js";
import { buildBusyboxTree } from "./helpers/images.js";
import { leftovers } from "./helpers/leftovers.js";
import { MT, OciLayoutWriter, tarDir } from "./helpers/registry.js";
import { runPiped } from "./helpers/run.js";

// `kindling run NAME` on an imported image: the lower layer is the lazy FUSE file (src/lazy).
let tmp: string;
let home: KindlingHome;
const ids: string[] = [];

before(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), "kindling-runlazy-"));
  home = new KindlingHome(path.join(tmp, "home"));
  const tree = path.join(tmp, "tree");
  await buildBusyboxTree(tree);
  // Big enough to be stored in its own blocks, not in a fragment the mount may already have read.
  await writeFile(path.join(tree, "data/big"), randomBytes(4 << 20));
  const layout = await OciLayoutWriter.create(path.join(tmp, "layout"));
  const manifest = await layout.image([{ data: await tarDir(tree), mediaType: MT.layerTar }], {
    config: {
      Entrypoint: ["/bin/sh", "-c"],
      Cmd: ['echo default; pwd; id -u; echo "$IMGVAR"'],
      Env: ["PATH=/bin", "IMGVAR=from-image"],
      WorkingDir: "/data",
      User: "app",
    },
  });
  await layout.tag(manifest, "latest");
  await importImage(home, `${layout.dir}:latest`, { name: "bb" });
});

after(async () => {
  await cleanupStaleRuns(home).catch(() => {});
  const left = await leftovers(home.root, undefined, ids);
  await rm(tmp, { recursive: true, force: true });
  assert.deepEqual(left, []);
});

async function run(command: string[], flags: RawRunFlags = {}) {
  const r = await runPiped({ home, image: "bb", command, flags: { runtime: "runc", ...flags } });
  ids.push(r.id);
  return r;
}

test("an imported image runs with its ENTRYPOINT, CMD, Env, WorkingDir and User", async () => {
  const r = await run([]);
  assert.equal(r.stderr, "");
  assert.equal(r.stdout, "default\n/data\n1000\nfrom-image\n");
  assert.equal(r.status, 0);
  assert.deepEqual(await leftovers(home.root, undefined, ids), []);
});

test("flags override the image config; arguments replace CMD only", async () => {
  const r = await run(['echo "$IMGVAR"; pwd; id -u; exit 5'], {
    env: ["IMGVAR=flag"],
    workdir: "/tmp",
    user: "0",
  });
  assert.equal(r.stdout, "flag\n/tmp\n0\n");
  assert.equal(r.status, 5);
  const e = await run(["hi"], { entrypoint: "echo" });
  assert.equal(e.stdout, "hi\n");
  assert.deepEqual(await leftovers(home.root, undefined, ids), []);
});

test("runsc runs the lazy image too", async () => {
  const r = await run(["cat /data/hello"], { runtime: "runsc" });
  assert.equal(r.stdout, "hello from the image\n");
  assert.equal(r.status, 0);
  assert.deepEqual(await leftovers(home.root, undefined, ids), []);
});

test("Ctrl-C on `kindling run NAME` releases the container, the mounts and the lazy daemon", async () => {
  const cli = await spawnCliUntil(
    ["run", "--runtime", "runc", "--stop-timeout", "0.3", "bb", "--", "echo ready; exec sleep 30"],
    { home },
  );
  const during = await leftovers(home.root);
  assert.ok(
    during.some((l) => l.includes("lazy/daemon")),
    during.join("; "),
  );
  cli.child.kill("SIGINT");
  assert.equal(await cli.exit(), 137);
  assert.deepEqual(await leftovers(home.root), []);
});

test("the lazy daemon killed during a run: a clear error (125) and nothing left behind", async () => {
  const cli = await spawnCliUntil(
    ["run", "--runtime", "runc", "bb", "--", "echo ready; sleep 1; cat /data/big >/dev/null"],
    {
      home,
    },
  );
  const daemon = (await leftovers(home.root)).find((l) => l.includes("lazy/daemon"));
  const pid = Number(/^process (\d+):/.exec(daemon ?? "")?.[1]);
  assert.ok(pid > 0, "no lazy daemon found");
  process.kill(pid, "SIGKILL");
  assert.equal(await cli.exit(), 125);
  assert.match(
    cli.err(),
    /the lazy image daemon of bb \(pid \d+\) died during the run; the process ended with status 1/,
  );
  assert.deepEqual(await leftovers(home.root), []);
});

test("every run of an image shares one lazy daemon and one SquashFS mount, kept until idle", async () => {
  const digest = (await loadImage(home, "bb")).digest;
  await run(["true"]);
  const first = await liveDaemonPids(home, digest);
  assert.equal(first.length, 1, "the daemon stays after the run, for the next one");
  // Two containers at once: one loop device and one SquashFS mount between them, two overlays,
  // each mounted by runc at "/" in its container's mount namespace (none on the host).
  const [a, b] = await Promise.all([
    run(["sleep 2; cat /data/hello"]),
    run(["sleep 2; cat /data/hello"]),
    (async () => {
      const roots = async () => {
        const found: string[] = [];
        for (const pid of await listPids()) {
          if ((await readCmdline(pid)) !== "sleep\u00002\u0000") continue;
          const info = await readFile(`/proc/${pid}/mountinfo`, "utf8").catch(() => "");
          const root = info.split("\n").find((l) => l.split(" ")[4] === "/");
          if (root?.includes(" - overlay ") && root.includes(`upperdir=${home.runs}/`)) found.push(root);
        }
        return found;
      };
      for (let i = 0; i < 200 && (await roots()).length < 2; i++) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const loops = (await exec("losetup", ["-a"])).stdout.split("\n").filter((l) => l.includes(home.root));
      const mounts = await mountsUnder(home.root);
      assert.equal(loops.length, 1, loops.join("; "));
      assert.equal(mounts.filter((m) => m.fsType === "squashfs").length, 1);
      assert.equal(mounts.filter((m) => m.fsType === "overlay").length, 0, "no overlay on the host");
      assert.equal(new Set(await roots()).size, 2, "each container's root is its own overlay");
    })(),
  ]);
  assert.equal(a.stdout, "hello from the image\n");
  assert.equal(b.stdout, "hello from the image\n");
  assert.deepEqual(await liveDaemonPids(home, digest), first, "later runs used the same daemon");
  // Idle (no run uses it): the leak check stops it, as its idle timeout would.
  assert.deepEqual(await leftovers(home.root, undefined, ids), []);
  assert.deepEqual(await liveDaemonPids(home, digest), []);
});

// Last but one: it corrupts the store's chunks, which other tests share.
test("`image rm` refuses an image whose container outlives its killed CLI; the container reads on", async () => {
  const cli = await spawnCliUntil(
    ["run", "--runtime", "runc", "bb", "--", "echo ready; sleep 8; cat /data/big | wc -c"],
    {
      home,
    },
  );
  // The CLI dies at once; runc and its container go on (orphaned), and the image must stay.
  cli.child.kill("SIGKILL");
  await cli.exit();
  const runc = async () =>
    (
      await exec("pgrep", ["-f", "--", `runc --root ${home.root}/run/`], { allowFailure: true })
    ).stdout.trim();
  assert.ok((await runc()).length > 0, "the orphaned container runs");
  await assert.rejects(removeImage(home, "bb"), /image bb is in use/);
  assert.ok(await findImage(home, "bb"), "refused: the image is still there");
  // It reads its 4 MiB file after the refused rm (8 s after it started): the chunks and the daemon stayed. (Its output went
  // to the dead CLI's pipe; it ends with status 0 or SIGPIPE either way: wait for it, bounded.)
  for (let waited = 0; (await runc()).length > 0; waited += 200) {
    assert.ok(waited < 60_000, "the orphaned container ends");
    await new Promise((r) => setTimeout(r, 200));
  }
  const stats = await imageStats(home, (await loadImage(home, "bb")).digest);
  assert.equal(stats.readErrors, 0, "no read of the orphaned container failed");
  await cleanupStaleRuns(home); // the killed CLI's run dir
  assert.deepEqual(await leftovers(home.root, undefined, ids), []);
});

test("corrupt chunks in the store: a clear error (125) and nothing left behind", async () => {
  const record = await loadImage(home, "bb");
  const index = await readBlockIndex(home, record.digest);
  for (const c of index.chunks) await writeFile(home.blobPath(c.digest), randomBytes(c.length));
  const r = await runCli(["run", "--runtime", "runc", "bb", "--", "cat", "/data/hello"], { home });
  assert.equal(r.code, 125);
  assert.equal(r.stdout, "");
  assert.match(r.stderr, /^kindling: .*bb.*(corrupt|digest|verif|EIO|failed)/im);
  assert.deepEqual(await leftovers(home.root), []);
});

test("`image rm` refuses an image a run still reads, and stops its idle daemon otherwise", async () => {
  const image = await resolveImage(home, "bb");
  const inUse = await image.blockImage.open();
  await assert.rejects(removeImage(home, "bb"), /image bb is in use \(lazy daemon pid \d+ serves it/);
  assert.ok(await findImage(home, "bb"), "refused: the image is still there");
  await inUse.close();
  await removeImage(home, "bb");
  assert.equal(await findImage(home, "bb"), null);
  assert.deepEqual(await leftovers(home.root, undefined, ids), []);
});
