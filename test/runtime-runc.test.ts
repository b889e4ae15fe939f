import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { resolveImage } from "../src/runtime/image.js";
import { runContainer } from "../src/runtime/lifecycle.js";
import { parseRunOptions, type RawRunFlags } from "../src/runtime/options.js";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import { getRuntime, runtimeFor } from "../src/runtime/runtimes.js";
import { KindlingHome } from "../src/util/home.js";
import { KINDLING, runCli, spawnCliUntil } from "./helpers/cli.js";
import { killRunOwner } from "./helpers/home-service.js";
import { buildBusyboxTree, makeSquashfs } from "./helpers/images.js";
import { leftovers } from "./helpers/leftovers.js";
import { kindlingRaw } from "./helpers/rawbytes.js";
import { readAll } from "./helpers/streams.js";

let tmp: string;
let home: KindlingHome;
let image: string;
const ids: string[] = [];

before(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), "kindling-runc-"));
  home = new KindlingHome(path.join(tmp, "home"));
  await buildBusyboxTree(path.join(tmp, "tree"));
  image = path.join(tmp, "busybox.sqfs");
  await makeSquashfs(path.join(tmp, "tree"), image);
});

after(async () => {
  // Whatever a failed test left: release it, so no test run leaves mounts or containers behind.
  await cleanupStaleRuns(home).catch(() => {});
  const left = await leftovers(home.root, image, ids);
  await rm(tmp, { recursive: true, force: true });
  assert.deepEqual(left, []);
});

interface Ran {
  id: string;
  status: number;
  stdout: string;
  stderr: string;
  notes: string[];
  message?: string;
  stoppedBy?: string;
}

/** Runs a container through the API with piped stdio. */
async function run(command: string[], flags: RawRunFlags = {}): Promise<Ran> {
  const options = await parseRunOptions(image, command, { runtime: "runc", stopTimeout: "0.5", ...flags });
  const notes: string[] = [];
  const handle = runContainer({
    home,
    options,
    image: await resolveImage(home, image),
    runtime: await runtimeFor(options),
    stdio: { stdout: "pipe", stderr: "pipe" },
    notify: (m) => notes.push(m),
  });
  const started = await handle.started.catch(async (err) => {
    await handle.result.catch(() => {});
    throw err;
  });
  const [stdout, stderr, result] = await Promise.all([
    readAll(started.stdout),
    readAll(started.stderr),
    handle.result,
  ]);
  ids.push(result.id);
  return { ...result, stdout, stderr, notes };
}

async function assertClean(): Promise<void> {
  assert.deepEqual(await leftovers(home.root, image, ids), []);
}

test("stdout and stderr stay apart; status 0 and 3 pass through", async () => {
  const r = await run(["sh", "-c", "echo out; echo err >&2; echo out2"]);
  assert.equal(r.stdout, "out\nout2\n");
  assert.equal(r.stderr, "err\n");
  assert.equal(r.status, 0);
  const r3 = await run(["sh", "-c", "exit 3"]);
  assert.equal(r3.status, 3);
  await assertClean();
});

test("a process killed by a signal (OOM kill under --memory) gives 128+n; limits reach the cgroup", async () => {
  const limits = await run(
    [
      "sh",
      "-c",
      "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us; ulimit -n",
    ],
    { memory: "32", cpus: "0.5" },
  );
  const nofile = /^Max open files\s+\S+\s+(\S+)/m.exec(await readFile("/proc/self/limits", "utf8"))![1];
  assert.equal(limits.stdout, `${32 * 1024 * 1024}\n50000\n${nofile}\n`);
  const oom = await run(["sh", "-c", 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo survived'], {
    memory: "32",
  });
  assert.equal(oom.status, 137);
  assert.equal(oom.stdout, "");
  await assertClean();
});

test("env, cwd, hostname and user come from the image and the flags", async () => {
  const env = await run(["env"], { env: ["FOO=bar", "PATH=/bin"], hostname: "kbox" });
  const vars = env.stdout.trim().split("\n").sort();
  assert.deepEqual(vars, ["FOO=bar", "HOME=/root", "HOSTNAME=kbox", "PATH=/bin"]);
  const cwd = await run(["sh", "-c", "pwd; hostname; cat /etc/hostname"], {
    workdir: "/made/for/me",
    hostname: "kbox",
  });
  assert.equal(cwd.stdout, "/made/for/me\nkbox\nkbox\n");
  const numeric = await run(
    ["sh", "-c", "id -u; id -g; touch /tmp/x && ls -n /tmp/x | awk '{print $3\":\"$4}'"],
    {
      user: "1000:1000",
    },
  );
  assert.equal(numeric.stdout, "1000\n1000\n1000:1000\n");
  const named = await run(["sh", "-c", "id -G; echo $HOME"], { user: "app" });
  assert.equal(named.stdout, "1000 2000\n/home/app\n");
  const root = await run(["id", "-u"]);
  assert.equal(root.stdout, "0\n");
  await assertClean();
});

test("the seccomp filter denies new namespaces; ordinary work is unaffected", async () => {
  const r = await run([
    "sh",
    "-c",
    "unshare -U -r true; echo userns=$?; unshare -n true; echo netns=$?; (true &); wait; grep Seccomp: /proc/self/status",
  ]);
  assert.equal(r.stdout, "userns=1\nnetns=1\nSeccomp:\t2\n");
  assert.match(r.stderr, /unshare\(0x10000000\): Operation not permitted/);
  await assertClean();
});

test("a ro mount is not writable; a rw mount's writes show on the host", async () => {
  const ro = path.join(tmp, "ro");
  const rw = path.join(tmp, "rw");
  await mkdir(ro);
  await mkdir(rw);
  await writeFile(path.join(ro, "f"), "host file\n");
  const r = await run(["sh", "-c", "cat /in/f; touch /in/new; echo status=$?; echo written > /out/w"], {
    volume: [`${ro}:/in:ro`, `${rw}:/out`],
  });
  assert.match(r.stdout, /^host file\nstatus=1\n$/);
  assert.match(r.stderr, /Read-only file system/);
  assert.deepEqual(await readdir(ro), ["f"]);
  assert.equal(await readFile(path.join(rw, "w"), "utf8"), "written\n");
  await assertClean();
});

test("writes to / stay in their container and are gone for the next run", async () => {
  const first = await run(["sh", "-c", "echo mine > /newfile && rm /data/hello && cat /newfile"]);
  assert.equal(first.stdout, "mine\n");
  assert.equal(first.status, 0);
  const second = await run(["sh", "-c", "test -e /newfile && echo leaked; cat /data/hello"]);
  assert.equal(second.stdout, "hello from the image\n");
  await assertClean();
});

test("--timeout stops the container: TERM, then KILL after the grace period", async () => {
  const t0 = Date.now();
  const r = await run(["sleep", "30"], { timeout: "0.5", stopTimeout: "0.5" });
  assert.equal(r.status, 137); // a PID 1 without a TERM handler ignores TERM
  assert.equal(r.stoppedBy, "timeout");
  assert.match(r.notes.join("\n"), /timeout after 0.5s: stopping container/);
  assert.match(r.notes.join("\n"), /did not stop within 0.5s: sending KILL/);
  assert.ok(Date.now() - t0 < 8000, `took ${Date.now() - t0} ms`);
  const handled = await run(["sh", "-c", 'trap "echo term; exit 0" TERM; sleep 30 & wait'], {
    timeout: "0.5",
    stopTimeout: "5",
  });
  assert.equal(handled.status, 0);
  assert.equal(handled.stdout, "term\n");
  await assertClean();
});

test("failures release everything: missing command (127), unknown user, a file that is no SquashFS", async () => {
  const missing = await run(["no-such-command"]);
  assert.equal(missing.status, 127);
  assert.match(missing.message ?? "", /no-such-command.*not found/);
  await assert.rejects(
    run(["true"], { user: "nobody" }),
    /user "nobody" is not in the image's \/etc\/passwd/,
  );
  const junk = path.join(tmp, "junk.sqfs");
  await writeFile(junk, Buffer.alloc(1 << 20, 7));
  const options = await parseRunOptions(junk, ["true"], { runtime: "runc" });
  const handle = runContainer({
    home,
    options,
    image: await resolveImage(home, junk),
    runtime: getRuntime("runc", "lazy"),
    notify: () => {},
  });
  await assert.rejects(handle.result, /cannot mount image file .*junk.sqfs as SquashFS/);
  assert.equal((await leftovers(home.root, junk)).length, 0);
  await assertClean();
});

/** `kindling run --runtime runc ARGS`, once the container printed "ready" (bounded). */
function spawnCli(args: string[]) {
  return spawnCliUntil(["run", "--runtime", "runc", ...args], { home });
}

test("Ctrl-C (SIGINT to kindling) sends TERM to the container, then KILL; status is the process's", async () => {
  const handled = await spawnCli([
    image,
    "--",
    "sh",
    "-c",
    'trap "echo got-term; exit 7" TERM; echo ready; sleep 30 & wait',
  ]);
  handled.child.kill("SIGINT");
  assert.equal(await handled.exit(), 7);
  assert.equal(handled.out(), "ready\ngot-term\n");
  assert.match(handled.err(), /SIGINT: stopping container \w+ \(TERM, KILL after 10s\)/);

  const stubborn = await spawnCli([
    "--stop-timeout",
    "0.3",
    image,
    "--",
    "sh",
    "-c",
    "echo ready; exec sleep 30",
  ]);
  const t0 = Date.now();
  stubborn.child.kill("SIGTERM");
  assert.equal(await stubborn.exit(), 137);
  assert.ok(Date.now() - t0 < 9000, `took ${Date.now() - t0} ms`);
  await assertClean();
});

test("a run whose owner was SIGKILLed is cleaned up by the next run, a live one is not touched", async () => {
  const dead = await spawnCli([image, "--", "sh", "-c", "echo ready; exec sleep 30"]);
  const [id] = await readdir(home.runs);
  ids.push(id);
  // Its owner is alive: cleanup leaves it alone.
  assert.deepEqual((await cleanupStaleRuns(home)).cleaned, []);
  assert.ok((await leftovers(home.root, image, [id])).some((l) => l.startsWith("mount")));
  // The owner is the container's supervisor (the run is the service's): its crash leaves it all.
  await killRunOwner(home.runs);
  assert.equal(await dead.exit(), 125);
  assert.match(dead.err(), /supervisor went away/);
  const left = await leftovers(home.root, image, [id]);
  for (const kind of ["mount", "loop", "process", "cgroup", "run dir"]) {
    assert.ok(
      left.some((l) => l.startsWith(kind)),
      `expected a leftover ${kind}: ${left.join("; ")}`,
    );
  }
  const next = await run(["echo", "next"]);
  assert.equal(next.stdout, "next\n");
  await assertClean();
});

test("the CLI: exit status, output, and clear errors for bad flags (status 125)", async () => {
  const cli = (args: string[]) => runCli(["run", "--runtime", "runc", ...args], { home });
  const ok = await cli([image, "--", "sh", "-c", "echo hi; echo oops >&2; exit 4"]);
  assert.deepEqual(ok, { code: 4, stdout: "hi\n", stderr: "oops\n" });
  const timedOut = await cli(["--timeout", "0.3", "--stop-timeout", "0.2", image, "--", "sleep", "30"]);
  assert.equal(timedOut.code, 137);
  assert.match(timedOut.stderr, /stopped by --timeout 0.3s: status 137 \(SIGKILL\)/);
  const bad: [string[], RegExp][] = [
    [["-v", "/a/b", image], /kindling: -v \/a\/b: expected SRC:DST or SRC:DST:ro/],
    [["-v", `${tmp}/nope:/x`, image], /kindling: -v .*: source .*nope does not exist/],
    [["-v", `${tmp}:x`, image], /DST must be an absolute path, got "x"/],
    [["--runtime", "kvm", image], /--runtime: unknown value "kvm"/],
    [["--disk", "1G", image, "--", "true"], /kindling: --disk applies to VM runtimes/],
    [["--rootfs", "copy", image, "--", "true"], /--rootfs copy does not apply to --runtime runc/],
    [["--memory", "lots", image], /--memory lots: expected a whole number of MiB/],
    [[`${tmp}/missing.sqfs`, "--", "true"], /image file .*missing.sqfs does not exist/],
    [[image], /no command: the image has no ENTRYPOINT or CMD; give one after --/],
  ];
  for (const [args, message] of bad) {
    const r = await cli(args);
    assert.equal(r.code, 125, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, message);
  }
  await assertClean();
});

test("a stop before the process started starts nothing and releases everything (status 128+n)", async () => {
  const options = await parseRunOptions(image, ["echo", "never"], { runtime: "runc" });
  const handle = runContainer({
    home,
    options,
    image: await resolveImage(home, image),
    runtime: getRuntime("runc", "lazy"),
    stdio: { stdout: "pipe", stderr: "pipe" },
  });
  handle.stop("SIGINT");
  const result = await handle.result;
  assert.equal(result.status, 130);
  assert.equal(result.stoppedBy, "SIGINT");
  await assert.rejects(handle.started, /stopped \(SIGINT\) before the container started/);
  await assertClean();
});

test("-i passes stdin; a second Ctrl-C kills at once", async () => {
  const piped = await runCli(["run", "--runtime", "runc", "-i", image, "--", "tr", "a-z", "A-Z"], {
    home,
    input: "piped input\n",
  });
  assert.equal(piped.stdout, "PIPED INPUT\n");

  const stubborn = await spawnCli([image, "--", "sh", "-c", 'trap "" TERM; echo ready; sleep 30 & wait']);
  const t0 = Date.now();
  stubborn.child.kill("SIGINT");
  await new Promise((r) => setTimeout(r, 300));
  stubborn.child.kill("SIGINT");
  assert.equal(await stubborn.exit(), 137);
  assert.ok(
    Date.now() - t0 < 9000,
    `took ${Date.now() - t0} ms: the second Ctrl-C did not skip the 10 s grace`,
  );
  await assertClean();
});

test("CLI: bytes that are not UTF-8 in -e and arguments reach runc as runc reads config.json (U+FFFD)", async () => {
  // config.json is JSON, which runc decodes with Go's encoding/json: an invalid byte (raw or as a
  // lone-surrogate escape) becomes U+FFFD. The VM runtimes carry the byte itself (vm-runtime.test.ts).
  const r = await kindlingRaw(
    KINDLING,
    `run --runtime runc -e $'X=a\\xffb' ${image} -- sh -c 'printf %s "$X" "$1"' sh $'c\\xfed'`,
    { ...process.env, KINDLING_HOME: home.root },
  );
  assert.equal(r.code, 0, r.stderr);
  const fffd = [0xef, 0xbf, 0xbd];
  assert.deepEqual(r.stdout, Buffer.from([0x61, ...fffd, 0x62, 0x63, ...fffd, 0x64]));
});
