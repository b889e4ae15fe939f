/**
 * `kindling run --runtime qemu` with each --rootfs strategy, real VMs (QEMU TCG here): a two-layer image,
 * one ro and one rw -v mount; 100 -v mounts with lazy; per-mount packing with --disk (drive order);
 * failures; the CLI end to end. After every run nothing is left mounted, attached or running.
 */
import assert from "node:assert/strict";
import { chmod, lstat, mkdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import type { RawRunFlags } from "../src/runtime/options.js";
import { KINDLING, runCli } from "./helpers/cli.js";
import { leftovers } from "./helpers/leftovers.js";
import { kindlingRaw } from "./helpers/rawbytes.js";
import { runPiped } from "./helpers/run.js";
import { type VmTestHome, vmTestHome } from "./helpers/vm-image.js";

let t: VmTestHome;
let ro: string;
let rw: string;

before(async () => {
  t = await vmTestHome();
  ro = path.join(t.tmp, "ro");
  rw = path.join(t.tmp, "rw");
  await mkdir(ro);
  await mkdir(rw);
  await chmod(rw, 0o777); // the container runs as uid 1000
  await writeFile(path.join(ro, "data"), "read-only data\n");
});

after(async () => {
  assert.deepEqual(await leftovers(t.home.root), []);
  await t.cleanup();
});

async function run(command: string[], flags: RawRunFlags) {
  const r = await runPiped({ home: t.home, image: "ml", command, flags: { runtime: "qemu", ...flags } });
  assert.deepEqual(await leftovers(t.home.root), [], "nothing left after the run");
  return r;
}

// As the image's user "app" (1000, HOME /home/app, also in group "extra" 2000): names and groups resolve
// from the image's /etc/passwd and /etc/group. --hostname box1 is in /etc/hostname and /etc/hosts.
const SCRIPT =
  'cat /data/hello /data/layer2 /ro/data; echo "written by $0" > /rw/out; echo x > /ro/x 2>/dev/null; echo "$(id -un) $(id -u) $HOME"; ' +
  'id -G; cat /etc/hostname; grep "box1" /etc/hosts';

for (const strategy of ["lazy", "squashfs", "copy", "virtiofs"] as const) {
  test(`--rootfs ${strategy}: image layers, ro mount, rw mount${strategy === "squashfs" ? " (writes lost)" : " written back"}`, async () => {
    await rm(path.join(rw, "out"), { force: true });
    const r = await run(["/bin/sh", "-c", SCRIPT, strategy], {
      rootfs: strategy,
      volume: [`${ro}:/ro:ro`, `${rw}:/rw`],
      user: "app",
      hostname: "box1",
    });
    assert.equal(r.status, 0, r.stderr);
    // /etc/hosts names the run's address on the bridge (docs/network.md), as Docker's does
    assert.match(
      r.stdout,
      /^hello from layer 2\nfrom layer 2\nread-only data\napp 1000 \/home\/app\n1000 2000\nbox1\n10\.\d+\.\d+\.\d+\tbox1\n$/,
    );
    const out = await readFile(path.join(rw, "out"), "utf8").catch(() => undefined);
    if (strategy === "squashfs") assert.equal(out, undefined);
    else assert.equal(out, `written by ${strategy}\n`);
    // the ro source is never written to
    assert.equal(await readFile(path.join(ro, "x"), "utf8").catch(() => undefined), undefined);
  });
}

test("lazy: 100 -v mounts (60 ro, 40 rw), packed into two drives", async () => {
  const dir = path.join(t.tmp, "many");
  const volume: string[] = [];
  for (let i = 0; i < 100; i++) {
    const d = path.join(dir, String(i));
    await mkdir(d, { recursive: true });
    await writeFile(path.join(d, "id"), `${i}\n`);
    volume.push(`${d}:/m/${i}${i < 60 ? ":ro" : ""}`);
  }
  const r = await run(
    [
      "/bin/sh",
      "-c",
      "cat /m/0/id /m/59/id /m/60/id /m/99/id; for i in $(seq 60 99); do echo w$i > /m/$i/w; done; ls /m | wc -l",
    ],
    { volume },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "0\n59\n60\n99\n100\n");
  assert.equal(await readFile(path.join(dir, "99", "w"), "utf8"), "w99\n");
  assert.equal(await readFile(path.join(dir, "60", "w"), "utf8"), "w60\n");
});

test("per-mount packing with --disk: each drive lands where it belongs (drive order)", async () => {
  const dir = path.join(t.tmp, "per");
  const volume: string[] = [];
  for (let i = 0; i < 5; i++) {
    const d = path.join(dir, String(i));
    await mkdir(d, { recursive: true });
    await writeFile(path.join(d, "id"), `${i}\n`);
    volume.push(`${d}:/p/${i}${i % 2 === 0 ? ":ro" : ""}`);
  }
  const file = path.join(dir, "single-file");
  await writeFile(file, "a file mount\n");
  volume.push(`${file}:/etc/single:ro`);
  const rwFile = path.join(dir, "rw-file");
  await writeFile(rwFile, "line 1\n");
  volume.push(`${rwFile}:/etc/rwfile`);
  const r = await run(
    [
      "/bin/sh",
      "-c",
      'for i in 0 1 2 3 4; do cat /p/$i/id; done; cat /etc/single; echo w > /p/3/w; echo line 2 >> /etc/rwfile; df -P / | tail -1 | cut -c1-4; grep -c " /p/" /proc/mounts',
    ],
    { volume, mountPacking: "per-mount", disk: "64M" },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "0\n1\n2\n3\n4\na file mount\nover\n5\n");
  assert.equal(await readFile(path.join(dir, "3", "w"), "utf8"), "w\n");
  assert.equal(await readFile(rwFile, "utf8"), "line 1\nline 2\n");
});

test("exit status, a missing command (127) and a guest mount failure leave nothing behind", async () => {
  // root: gid 0 and no supplementary groups (the image's /etc/group lists no members for root), as runc
  const failing = await run(["/bin/sh", "-c", "echo out; id -G; echo err >&2; exit 7"], {});
  assert.deepEqual([failing.status, failing.stdout, failing.stderr], [7, "out\n0\n", "err\n"]);
  const missing = await run(["/no/such/command"], {});
  assert.equal(missing.status, 127);
  // /data/hello is a file in the image: a directory cannot be bound onto it
  await assert.rejects(run(["true"], { volume: [`${ro}:/data/hello/sub`] }), /guest setup failed/);
});

test("-w creates a missing working directory, and a symlinked -v source is written through (as runc)", async () => {
  const cwd = await run(["sh", "-c", "pwd; ls -ld . | cut -c1-10"], { workdir: "/made/for/me" });
  assert.equal(cwd.status, 0, cwd.stderr);
  assert.equal(cwd.stdout, "/made/for/me\ndrwxr-xr-x\n");
  const target = path.join(t.tmp, "target-file");
  const link = path.join(t.tmp, "link-file");
  const dirTarget = path.join(t.tmp, "target-dir");
  const dirLink = path.join(t.tmp, "link-dir");
  await writeFile(target, "before\n");
  await symlink("target-file", link);
  await mkdir(dirTarget);
  await symlink("target-dir", dirLink);
  const r = await run(["sh", "-c", "echo after > /f; echo new > /d/new"], {
    volume: [`${link}:/f`, `${dirLink}:/d`],
  });
  assert.equal(r.status, 0, r.stderr);
  assert.ok((await lstat(link)).isSymbolicLink(), "the link stays a link");
  assert.ok((await lstat(dirLink)).isSymbolicLink(), "the dir link stays a link");
  assert.equal(await readFile(target, "utf8"), "after\n");
  assert.equal(await readFile(path.join(dirTarget, "new"), "utf8"), "new\n");
});

test("CLI: bytes that are not UTF-8 in -e values and arguments reach the process as themselves", async () => {
  const r = await kindlingRaw(
    KINDLING,
    `run --runtime qemu -e $'X=a\\xffb' ml -- sh -c 'printf %s "$X" "$1"' sh $'c\\xfe\\xc3d'`,
    { ...process.env, KINDLING_HOME: t.home.root },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout, Buffer.from([0x61, 0xff, 0x62, 0x63, 0xfe, 0xc3, 0x64]));
});

test("CLI: kindling run --runtime qemu streams stdout and stderr apart and exits with the status", async () => {
  const r = await runCli(
    [
      "run",
      "--runtime",
      "qemu",
      "-v",
      `${rw}:/rw`,
      "ml",
      "--",
      "sh",
      "-c",
      "echo cli > /rw/cli; echo to-out; echo to-err >&2; exit 3",
    ],
    { home: t.home },
  );
  assert.equal(r.code, 3);
  assert.equal(r.stdout, "to-out\n");
  assert.equal(r.stderr, "to-err\n");
  assert.equal(await readFile(path.join(rw, "cli"), "utf8"), "cli\n");
});

test("CLI: --timeout stops the process in the VM through the agent (TERM: 143)", async () => {
  const r = await runCli(
    ["run", "--runtime", "qemu", "--timeout", "1", "ml", "--", "sh", "-c", "echo started; sleep 30"],
    {
      home: t.home,
    },
  );
  assert.equal(r.stdout, "started\n");
  assert.equal(r.code, 143, r.stderr);
  assert.match(r.stderr, /stopped by --timeout 1s: status 143 \(SIGTERM\)/);
});

test("CLI: --runtime firecracker without the binary names kindling doctor", async () => {
  const r = await runCli(["run", "--runtime", "firecracker", "ml", "--", "true"], {
    home: t.home,
    env: { KINDLING_FIRECRACKER: "/nonexistent/firecracker" },
  });
  assert.equal(r.code, 125);
  assert.match(r.stderr, /firecracker is not installed.*kindling doctor/);
  const v = await runCli(["run", "--runtime", "firecracker", "--rootfs", "virtiofs", "ml", "--", "true"], {
    home: t.home,
  });
  assert.equal(v.code, 125);
  assert.match(v.stderr, /--rootfs virtiofs does not apply to --runtime firecracker/);
});

for (const agent of ["vsock", "serial"] as const) {
  test(`--agent ${agent}: stdout, stderr and 1 MiB of output arrive complete, the exit status too`, async () => {
    const r = await run(
      ["/bin/sh", "-c", "echo out; echo err >&2; head -c 1048576 /dev/zero | tr '\\0' 'v'; exit 5"],
      { rootfs: "squashfs", agent },
    );
    assert.equal(r.status, 5);
    assert.equal(r.stderr, "err\n");
    assert.equal(r.stdout, `out\n${"v".repeat(1048576)}`);
  });
}
