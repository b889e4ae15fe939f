import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { pickDefaultVmm } from "../src/doctor/report.js";
import type { RunConfig } from "../src/image/types.js";
import { buildOciSpec } from "../src/runtime/oci.js";
import { parseRunOptions } from "../src/runtime/options.js";
import { buildProcessSpec, mergeEnv, resolveArgs } from "../src/runtime/process.js";
import { resolveInRoot } from "../src/runtime/rootpath.js";
import { getRuntime, runtimeFor } from "../src/runtime/runtimes.js";
import { exitStatusOf } from "../src/runtime/status.js";
import { parseGroup, parsePasswd, resolveUser, type UserDb } from "../src/runtime/users.js";
import { decodeBytes, encodeBytes, rawArgv } from "../src/util/bytestring.js";
import { KindlingError } from "../src/util/errors.js";

let tmp: string;
before(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), "kindling-runopts-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const config: RunConfig = {
  entrypoint: ["/entry"],
  cmd: ["default", "arg"],
  env: ["PATH=/image/bin", "A=image", "B=image"],
  workingDir: "/srv",
  user: "app",
};
const users: UserDb = {
  passwd: parsePasswd("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbad line\n"),
  groups: parseGroup("root:x:0:\napp:x:1000:\nextra:x:2000:app,other\nwheel:x:10:root\n"),
};

test("flags are parsed and defaults filled", async () => {
  const o = await parseRunOptions("img", ["echo", "hi"], {
    volume: [`${tmp}:/data:ro`, `${tmp}:/rw`],
    env: ["X=1", "Y=a=b"],
    workdir: "/w//x/",
    user: "1000:2000",
    memory: "64",
    cpus: "0.5",
    timeout: "2.5",
    hostname: "box.example",
  });
  // The default runtime is auto, decided when the run starts (parsing probes nothing): then the VM
  // runtime `kindling doctor` picks (no Firecracker binary here: QEMU).
  assert.equal(o.runtime, "auto");
  assert.equal((await runtimeFor(o)).name, await pickDefaultVmm());
  assert.equal(o.rootfs, "lazy");
  assert.equal((await parseRunOptions("img", [], { runtime: "auto" })).runtime, "auto");
  assert.equal((await parseRunOptions("img", [], { runtime: "runc" })).runtime, "runc");
  assert.deepEqual(o.command, ["echo", "hi"]);
  assert.deepEqual(o.volumes, [
    { source: tmp, destination: "/data", readOnly: true },
    { source: tmp, destination: "/rw", readOnly: false },
  ]);
  assert.deepEqual(o.env, ["X=1", "Y=a=b"]);
  assert.equal(o.workdir, "/w/x");
  assert.deepEqual(o.user, { user: "1000", group: "2000" });
  assert.equal(o.memoryMiB, 64);
  assert.equal(o.cpus, 0.5);
  assert.equal(o.timeoutSeconds, 2.5);
  assert.equal(o.stopGraceSeconds, 10);
  assert.equal(o.hostname, "box.example");
});

test("bad flags give errors that name the flag and the problem", async () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ volume: ["/only-one-part"] }, /-v \/only-one-part: expected SRC:DST/],
    [{ volume: [`${tmp}:/a:rx`] }, /unknown mode "rx"/],
    [{ volume: [`${tmp}::ro`] }, /expected SRC:DST/],
    [{ volume: [`${tmp}/missing:/a`] }, /source .*missing does not exist/],
    [{ volume: [`${tmp}:relative`] }, /DST must be an absolute path/],
    [{ volume: [`${tmp}:/`] }, /DST cannot be \//],
    [{ volume: ["named:/a"] }, /SRC must be a host path/],
    [{ volume: [`${tmp}:/a`, `${tmp}:/a/`] }, /\/a is mounted twice/],
    [
      { runtime: "docker" },
      /--runtime: unknown value "docker" \(expected one of: runc, runsc, qemu, firecracker, auto\)/,
    ],
    [{ rootfs: "ext4" }, /--rootfs: unknown value "ext4"/],
    [{ env: ["=x"] }, /-e =x: expected K=V/],
    [{ workdir: "rel" }, /-w must be an absolute path/],
    [{ user: "a:b:c" }, /-u a:b:c: expected UID\[:GID\]/],
    [{ user: "99999999999" }, /out of range/],
    [{ memory: "1.5" }, /--memory 1.5: expected a whole number of MiB/],
    [{ memory: "0" }, /--memory/],
    [{ cpus: "-1" }, /--cpus -1/],
    [{ cpus: "4096" }, /this host has only/],
    [{ timeout: "0" }, /--timeout 0: expected a number of seconds above 0/],
    [{ timeout: "soon" }, /--timeout soon/],
    [{ hostname: "bad_name" }, /--hostname bad_name: not a valid host name/],
    [{ entrypoint: "[1]" }, /--entrypoint \[1\]: expected a JSON array of strings/],
  ];
  for (const [flags, message] of cases) {
    await assert.rejects(parseRunOptions("img", [], flags), (err: unknown) => {
      assert.ok(err instanceof KindlingError, `${JSON.stringify(flags)}: not a KindlingError`);
      assert.match(err.message, message, JSON.stringify(flags));
      return true;
    });
  }
  await assert.rejects(parseRunOptions("", [], {}), /an IMAGE is required/);
});

test("-e K takes K from our environment, and is dropped if unset", async () => {
  const o = await parseRunOptions("img", [], { env: ["HOSTVAR", "UNSET_VAR", "K="] }, { HOSTVAR: "v" });
  assert.deepEqual(o.env, ["HOSTVAR=v", "K="]);
});

test("entrypoint and cmd follow Docker's rules", () => {
  assert.deepEqual(resolveArgs(config, { command: [] }), ["/entry", "default", "arg"]);
  assert.deepEqual(resolveArgs(config, { command: ["x"] }), ["/entry", "x"]);
  assert.deepEqual(resolveArgs(config, { command: [], entrypoint: ["/other"] }), ["/other"]);
  assert.deepEqual(resolveArgs(config, { command: ["y"], entrypoint: ["/other"] }), ["/other", "y"]);
  assert.deepEqual(resolveArgs(config, { command: ["sh"], entrypoint: [] }), ["sh"]);
  const none = { ...config, entrypoint: [], cmd: [] };
  assert.throws(() => resolveArgs(none, { command: [] }), /no command: the image has no ENTRYPOINT or CMD/);
});

test("env merges defaults, image and flags in order, later winning", () => {
  assert.deepEqual(mergeEnv(["A=1", "B=1"], ["B=2", "C=2"], ["A=3"]), ["A=3", "B=2", "C=2"]);
});

test("the process spec merges the image config with the flags", async () => {
  const o = await parseRunOptions("img", [], { env: ["B=flag", "C=flag"] });
  const p = buildProcessSpec(config, o, users, "h1");
  assert.deepEqual(p.args, ["/entry", "default", "arg"]);
  assert.deepEqual(p.env, [
    "PATH=/image/bin",
    "HOSTNAME=h1",
    "A=image",
    "B=flag",
    "C=flag",
    "HOME=/home/app",
  ]);
  assert.equal(p.cwd, "/srv");
  assert.deepEqual([p.uid, p.gid, p.additionalGids], [1000, 1000, [2000]]);
  const o2 = await parseRunOptions("img", ["true"], { workdir: "/w", user: "0" });
  const p2 = buildProcessSpec({ ...config, workingDir: "" }, o2, users, "h1");
  assert.equal(p2.cwd, "/w");
  assert.deepEqual([p2.uid, p2.gid, p2.additionalGids], [0, 0, [10]]);
  assert.ok(p2.env.includes("HOME=/root"));
  const p3 = buildProcessSpec(
    { ...config, workingDir: "", user: "" },
    await parseRunOptions("i", ["t"], {}),
    users,
    "h",
  );
  assert.equal(p3.cwd, "/");
});

test("users resolve as Docker resolves them", () => {
  assert.deepEqual(resolveUser({ user: "4242" }, users), {
    uid: 4242,
    gid: 0,
    additionalGids: [],
    home: "/",
  });
  assert.deepEqual(resolveUser({ user: "app", group: "extra" }, users), {
    uid: 1000,
    gid: 2000,
    additionalGids: [],
    home: "/home/app",
  });
  assert.equal(resolveUser({ user: "1000", group: "7" }, users).gid, 7);
  assert.throws(
    () => resolveUser({ user: "nobody" }, users),
    /user "nobody" is not in the image's \/etc\/passwd/,
  );
  assert.throws(() => resolveUser({ user: "0", group: "nogroup" }, users), /group "nogroup"/);
});

test("the OCI spec carries args, env, cwd, user, mounts, limits and rlimits", async () => {
  const o = await parseRunOptions("img", ["sh"], {
    volume: [`${tmp}:/ro:ro`, `${tmp}:/rw`],
    memory: "64",
    cpus: "1.5",
    user: "1000",
  });
  const p = buildProcessSpec(config, o, users, "host");
  const spec = buildOciSpec({
    process: p,
    hostname: "host",
    rootfs: "rootfs",
    volumes: o.volumes,
    memoryMiB: o.memoryMiB,
    cpus: o.cpus,
    nofile: 4096,
    cgroupsPath: "/kindling/x",
  });
  assert.deepEqual(spec.process.args, ["/entry", "sh"]);
  assert.deepEqual(spec.process.user, { uid: 1000, gid: 1000, additionalGids: [2000] });
  assert.equal(spec.process.terminal, false);
  assert.equal(spec.hostname, "host");
  assert.deepEqual(spec.linux.resources.memory, { limit: 64 * 1024 * 1024 });
  assert.deepEqual(spec.linux.resources.cpu, { quota: 150000, period: 100000 });
  assert.deepEqual(spec.process.rlimits, [{ type: "RLIMIT_NOFILE", hard: 4096, soft: 4096 }]);
  const ro = spec.mounts.find((m) => m.destination === "/ro")!;
  assert.deepEqual(ro, {
    destination: "/ro",
    type: "bind",
    source: tmp,
    options: ["rbind", "rprivate", "ro"],
  });
  assert.ok(spec.mounts.find((m) => m.destination === "/rw")!.options!.includes("rw"));
  for (const d of ["/proc", "/dev", "/sys", "/dev/pts", "/dev/shm"]) {
    assert.ok(
      spec.mounts.some((m) => m.destination === d),
      d,
    );
  }
  assert.equal(spec.linux.seccomp?.defaultAction, "SCMP_ACT_ALLOW");
  assert.ok(spec.linux.seccomp?.syscalls.some((r) => r.names.includes("unshare")));
  const unfiltered = buildOciSpec({
    process: p,
    hostname: "host",
    rootfs: "rootfs",
    volumes: [],
    nofile: 1,
    seccomp: false,
  });
  assert.equal(unfiltered.linux.seccomp, undefined);
  assert.deepEqual(
    spec.linux.namespaces.map((n) => n.type),
    ["pid", "network", "ipc", "uts", "mount"],
  );
});

test("exit statuses: codes pass through, signals are 128+n", () => {
  assert.deepEqual(exitStatusOf(0, null), { status: 0, signal: undefined });
  assert.deepEqual(exitStatusOf(3, null), { status: 3, signal: undefined });
  assert.deepEqual(exitStatusOf(null, "SIGKILL"), { status: 137, signal: "SIGKILL" });
  assert.deepEqual(exitStatusOf(null, "SIGTERM"), { status: 143, signal: "SIGTERM" });
  // runc and runsc report a container killed by signal n as 128+n themselves.
  assert.deepEqual(exitStatusOf(137, null), { status: 137, signal: "SIGKILL" });
});

test("runtime dispatch: each runtime with the rootfs strategies it supports", () => {
  assert.equal(getRuntime("runc", "lazy").name, "runc");
  assert.equal(getRuntime("runsc", "lazy").name, "runsc");
  assert.equal(getRuntime("qemu", "virtiofs").name, "qemu");
  assert.throws(() => getRuntime("runc", "copy"), /--rootfs copy does not apply to --runtime runc/);
  assert.throws(() => getRuntime("runsc", "squashfs"), /--rootfs squashfs does not apply to --runtime runsc/);
  assert.throws(
    () => getRuntime("firecracker", "virtiofs"),
    /--rootfs virtiofs does not apply to --runtime firecracker/,
  );
});

test("paths in an image resolve inside it, whatever its symlinks say", async () => {
  const root = path.join(tmp, "root");
  await mkdir(path.join(root, "etc"), { recursive: true });
  await writeFile(path.join(root, "etc/real"), "x");
  await symlink("/etc/real", path.join(root, "etc/abs"));
  await symlink("../../../../etc/passwd", path.join(root, "etc/escape"));
  await symlink("loop2", path.join(root, "etc/loop1"));
  await symlink("loop1", path.join(root, "etc/loop2"));
  assert.equal(await resolveInRoot(root, "/etc/abs"), path.join(root, "etc/real"));
  assert.equal(await resolveInRoot(root, "/etc/escape"), path.join(root, "etc/passwd"));
  assert.equal(await resolveInRoot(root, "/../../x"), path.join(root, "x"));
  await assert.rejects(resolveInRoot(root, "/etc/loop1"), /too many symlinks/);
});

test("a missing runtime binary is named, with how to install it", async () => {
  const saved = process.env.PATH;
  process.env.PATH = "/nonexistent"; // runsc lives in /usr/bin, outside the sbin dirs always searched
  try {
    await assert.rejects(
      getRuntime("runsc", "lazy").checkHost(),
      /--runtime runsc: runsc is not installed \(apt-get install runsc\)/,
    );
  } finally {
    process.env.PATH = saved;
  }
});

test("a -v source that is a symlink is its target, for every runtime", async () => {
  const target = path.join(tmp, "vol-target");
  await writeFile(target, "x");
  await symlink("vol-target", path.join(tmp, "vol-link"));
  for (const runtime of ["runc", "qemu"]) {
    const o = await parseRunOptions("img", [], { runtime, volume: [`${tmp}/vol-link:/f`] });
    assert.equal(o.volumes[0]!.source, target);
  }
  await symlink("nowhere", path.join(tmp, "dangling"));
  await assert.rejects(
    parseRunOptions("img", [], { runtime: "runc", volume: [`${tmp}/dangling:/f`] }),
    /source .*dangling does not exist/,
  );
});

test("argument bytes that are not UTF-8 survive decoding and encoding (surrogateescape)", async () => {
  const raw = Buffer.from([
    0x61, 0xff, 0x62, 0xc3, 0xa9, 0xe2, 0x82, 0xed, 0xa0, 0x80, 0xf0, 0x9f, 0x98, 0x80,
  ]);
  const s = decodeBytes(raw);
  assert.equal(s, "a\udcffbé\udce2\udc82\udced\udca0\udc80😀");
  assert.deepEqual(encodeBytes(s), raw);
  assert.deepEqual(encodeBytes("plain é 😀"), Buffer.from("plain é 😀"));
  // rawArgv: the user's arguments are the tail of /proc/self/cmdline, node's own options before them
  const cmdline = path.join(tmp, "cmdline");
  await writeFile(
    cmdline,
    Buffer.concat([
      Buffer.from("node\0--enable-x\0/bin/k\0run\0-e\0X=a"),
      Buffer.from([0xff]),
      Buffer.from("\0"),
    ]),
  );
  assert.deepEqual(rawArgv(["/usr/bin/node", "/bin/k", "run", "-e", "X=a\ufffd"], cmdline), [
    "/usr/bin/node",
    "/bin/k",
    "run",
    "-e",
    "X=a\udcff",
  ]);
  // when the tail does not match what Node decoded, argv is kept as it is
  assert.deepEqual(rawArgv(["n", "k", "other"], cmdline), ["n", "k", "other"]);
});
