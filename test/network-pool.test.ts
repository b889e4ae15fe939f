/**
 * The service's pool of ready network namespaces (src/network/pool.ts), with the real CNI plugins and
 * runc: pooled runs get distinct addresses and reach each other; the pool is released when the
 * service stops; a SIGKILLed service's pooled namespaces are released by the next service's start and
 * by `kindling doctor --fix`. Host state is compared on the lines of `ip -o link`, `ip netns`,
 * `iptables -S` and `iptables -t nat -S` that name the home (other tests may change the host meanwhile).
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import {
  addNetworkList,
  createNetns,
  DEFAULT_PLUGIN_DIRS,
  deleteNetns,
  delNetworkList,
  homeNetworkNames,
  loadNetwork,
  networkSettings,
  OWNERS_DIR,
  poolDir,
  removeHomeNetwork,
  sweepNetwork,
} from "../src/network/index.js";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { buildBusyboxTree, makeSquashfs } from "./helpers/images.js";
import { leftovers } from "./helpers/leftovers.js";
import { fetchText, hostLines, networkLeftovers } from "./helpers/network.js";
import { freePort } from "./helpers/registry.js";
import { cli, startService, stopServiceAndContainers, type TestService } from "./helpers/service.js";

const KINDLING = fileURLToPath(new URL("../../bin/kindling", import.meta.url));
const HTTPD = ["httpd", "-f", "-p", "80", "-h", "/data"];
let tmp: string;
let home: KindlingHome;
let image: string;
let needles: string[];

before(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), "kindling-net-pool-"));
  home = new KindlingHome(path.join(tmp, "home")).ensure();
  await buildBusyboxTree(path.join(tmp, "tree"));
  image = path.join(tmp, "busybox.sqfs");
  await makeSquashfs(path.join(tmp, "tree"), image);
  // warm: the home's network, rules and bridge exist before any baseline is taken
  const list = await loadNetwork(home, networkSettings());
  const ns = `${homeNetworkNames(home).netnsPrefix}warm`;
  const at = { containerId: "warm", netns: await createNetns(ns), ifName: "eth0" };
  await delNetworkList(list, at, DEFAULT_PLUGIN_DIRS, await addNetworkList(list, at, DEFAULT_PLUGIN_DIRS));
  await deleteNetns(ns);
  const subnet = JSON.stringify(list).match(/"subnet":"(\d+\.\d+\.\d+\.)0\/24"/)![1]!;
  const { tag } = homeNetworkNames(home);
  // the bridge, its veths (master kl-<tag>), the namespaces, rules naming the network or its subnet
  needles = [`kl-${tag}`, `kindling-${tag}`, subnet];
});

after(async () => {
  await stopServiceAndContainers(home.root).catch(() => {});
  await cleanupStaleRuns(home).catch(() => {});
  const left = [...(await leftovers(home.root, image)), ...(await networkLeftovers(home))];
  await removeHomeNetwork(home);
  await rm(tmp, { recursive: true, force: true });
  assert.deepEqual((await sweepNetwork({ full: true })).errors, []);
  assert.deepEqual(left, []);
});

/** The home's lines of `ip -o link`, `ip netns`, `iptables -S`, `iptables -t nat -S`, normalized. */
const homeLines = () => hostLines(needles, true);

/** The pool's ready marks of the home. */
async function ready(of: KindlingHome = home): Promise<string[]> {
  return readdir(poolDir(homeNetworkNames(of).tag)).catch(() => [] as string[]);
}

/** Waits (bounded) until the pool has `n` ready namespaces (none of `not`). */
async function poolFilled(
  n: number,
  svc: TestService,
  not: string[] = [],
  of: KindlingHome = home,
): Promise<string[]> {
  const deadline = Date.now() + 60_000;
  let marks = await ready(of);
  while (marks.length < n || marks.some((m) => not.includes(m))) {
    if (Date.now() > deadline)
      throw new Error(`the pool has ${marks.length} of ${n} namespaces after 60 s: ${svc.output()}`);
    await sleep(50);
    marks = await ready(of);
  }
  return marks;
}

/** What `get` finds once it equals `want`, else after `ms` (another sweep may still be releasing). */
async function settled(get: () => Promise<string[]>, want: string[], ms = 30_000): Promise<string[]> {
  const deadline = Date.now() + ms;
  let found = await get();
  while (JSON.stringify(found) !== JSON.stringify(want) && Date.now() < deadline) {
    await sleep(200);
    found = await get();
  }
  return found;
}

test("pooled runs get distinct addresses and reach each other; the service's stop releases the pool", async () => {
  const baseline = await homeLines();
  const svc = await startService(home.root, [], { KINDLING_NETWORK_POOL: "2" });
  try {
    const marks = await poolFilled(2, svc);
    assert.equal(marks.length, 2);
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const r = await cli(home.root, ["run", "-d", "--runtime", "runc", image, "--", ...HTTPD]);
      assert.equal(r.code, 0, r.stderr);
      ids.push(r.stdout.trim());
    }
    const nets = [];
    for (const id of ids) {
      const insp = await cli(home.root, ["inspect", id, "--json"]);
      assert.equal(insp.code, 0, insp.stderr);
      nets.push((JSON.parse(insp.stdout) as { network: { ip: string; netns: string } }).network);
    }
    // both came from the pool (the second maybe from its refill)
    for (const n of nets) assert.match(path.basename(n.netns), /^kl-[0-9a-f]{8}-pool[0-9a-f]{8}$/);
    assert.ok(marks.includes(path.basename(nets[0]!.netns)), "the first took a namespace that was ready");
    assert.notEqual(nets[0]!.ip, nets[1]!.ip);
    assert.match(nets[0]!.ip, /^10\.\d+\.\d+\.\d+$/);
    for (const [from, to] of [
      [0, 1],
      [1, 0],
    ] as const) {
      // (not wget -T: this busybox build dies of SIGSEGV with it)
      const wget = `timeout 10 wget -q -O- http://${nets[to]!.ip}/hello`;
      const r = await cli(home.root, ["exec", ids[from]!, "--", "sh", "-c", wget]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "hello from the image\n");
    }
    // the pool fills again in the background
    const taken = nets.map((n) => path.basename(n.netns));
    const again = await poolFilled(2, svc, taken);
    assert.equal(again.length, 2);
    // -p: a pooled namespace, portmap ADDed on it (pooled.ts's publish)
    const port = await freePort();
    const pub = await cli(home.root, [
      "run",
      "-d",
      "--runtime",
      "runc",
      "-p",
      `127.0.0.1:${port}:80`,
      image,
      "--",
      ...HTTPD,
    ]);
    assert.equal(pub.code, 0, pub.stderr);
    ids.push(pub.stdout.trim());
    const insp = await cli(home.root, ["inspect", ids[2]!, "--json"]);
    const pubNet = (JSON.parse(insp.stdout) as { network: { netns: string; ports: unknown[] } }).network;
    assert.match(path.basename(pubNet.netns), /-pool[0-9a-f]{8}$/);
    assert.equal(pubNet.ports.length, 1);
    assert.equal(await fetchText(`http://127.0.0.1:${port}/hello`), "hello from the image\n");
    for (const id of ids) assert.equal((await cli(home.root, ["rm", "-f", id])).code, 0);
  } finally {
    await svc.stop();
  }
  assert.deepEqual(await ready(), []);
  assert.deepEqual(await settled(homeLines, baseline), baseline);
});

test("a SIGKILLed service's pooled namespaces are released by the next service's start and by doctor --fix", async () => {
  const baseline = await homeLines();
  const records = async () =>
    (await readdir(path.join(OWNERS_DIR, "runs")).catch(() => [] as string[])).filter((f) =>
      f.startsWith(homeNetworkNames(home).netnsPrefix),
    );
  // 1. the next start
  let svc = await startService(home.root, [], { KINDLING_NETWORK_POOL: "2" });
  const killed = await poolFilled(2, svc);
  await svc.kill9();
  let lines = await homeLines();
  for (const m of killed) assert.ok(lines.includes(m), `${m} is left by the killed service`);
  svc = await startService(home.root, [], { KINDLING_NETWORK_POOL: "2" });
  try {
    await poolFilled(2, svc, killed);
    lines = await homeLines();
    for (const m of killed)
      assert.ok(
        !lines.includes(m),
        `${m} was released by the next start: ${lines.join("\n")}\n${svc.output()}`,
      );
  } finally {
    await svc.stop();
  }
  assert.deepEqual(await settled(homeLines, baseline), baseline, svc.output());
  assert.deepEqual(await settled(records, []), [], svc.output());

  // 2. doctor --fix
  svc = await startService(home.root, [], { KINDLING_NETWORK_POOL: "2" });
  await poolFilled(2, svc);
  await svc.kill9();
  assert.notDeepEqual(await homeLines(), baseline);
  const r = await exec(KINDLING, ["doctor", "--fix"], {
    env: { ...process.env, KINDLING_HOME: home.root, KINDLING_SOCKET: "" },
    timeout: 120_000,
    allowFailure: true,
  });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(await settled(homeLines, baseline), baseline);
  assert.deepEqual(await settled(records, []), [], r.stdout);
  assert.deepEqual(await ready(), [], r.stdout);
  // no lease is left under the home
  const ipam = path.join(home.root, "network", "ipam", homeNetworkNames(home).network);
  const leases = (await readdir(ipam).catch(() => [] as string[])).filter((f) =>
    /^\d+\.\d+\.\d+\.\d+$/.test(f),
  );
  assert.deepEqual(leases, [], await readFile(path.join(ipam, leases[0] ?? "x"), "utf8").catch(() => ""));
});

test("a new home's service makes no bridge, rules or namespaces until the home's first bridged run", async () => {
  const fresh = new KindlingHome(path.join(tmp, "fresh")).ensure();
  const { tag } = homeNetworkNames(fresh);
  const lines = () => hostLines([`kl-${tag}`, `kindling-${tag}`]);
  const svc = await startService(fresh.root, [], { KINDLING_NETWORK_POOL: "2" });
  try {
    // a run that needs no network, through the service: still nothing of the network
    const none = await cli(fresh.root, [
      "run",
      "--runtime",
      "runc",
      "--network",
      "none",
      image,
      "--",
      "true",
    ]);
    assert.equal(none.code, 0, none.stderr);
    await sleep(1500); // (what an eager pool would have made by now: checked absent, not timed)
    assert.deepEqual(await lines(), [], svc.output());
    assert.deepEqual(await ready(fresh), []);
    // the first bridged run sets up its own network; the pool fills after it
    const r = await cli(fresh.root, ["run", "--runtime", "runc", image, "--", "true"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await poolFilled(2, svc, [], fresh)).length, 2);
  } finally {
    await svc.stop();
    await stopServiceAndContainers(fresh.root).catch(() => {});
  }
  assert.deepEqual(await ready(fresh), []);
  assert.deepEqual(await networkLeftovers(fresh), []);
  await removeHomeNetwork(fresh);
  assert.deepEqual(await lines(), []);
});

test("KINDLING_NETWORK_POOL=0: no pool; a user CNI config: no pool", async () => {
  const svc = await startService(home.root, [], { KINDLING_NETWORK_POOL: "0" });
  try {
    await sleep(1000);
    assert.deepEqual(await ready(), [], svc.output());
  } finally {
    await svc.stop();
  }
  const svc2 = await startService(home.root, [], { KINDLING_CNI_CONF_DIR: path.join(tmp, "no-such-dir") });
  try {
    await sleep(1000);
    assert.deepEqual(await ready(), [], svc2.output());
  } finally {
    await svc2.stop();
  }
});

test("kindling bench --filter network: the network row (setup from scratch, from the pool, teardown)", async () => {
  const work = path.join(tmp, "bench");
  await mkdir(work, { recursive: true });
  const r = await exec(KINDLING, ["bench", "--filter", "^network$", "--reps", "1", "--work-dir", work], {
    env: { ...process.env, KINDLING_HOME: path.join(tmp, "bench-home") },
    timeout: 300_000,
    allowFailure: true,
  });
  assert.equal(r.code, 0, r.stderr);
  for (const label of ["setup from scratch", "setup from the service's pool", "teardown inline"])
    assert.match(r.stdout, new RegExp(`\\| ${label}[^|]*\\| \\d+\\.\\d ms \\|`), r.stdout);
  assert.deepEqual(await readdir(work), [], "the bench's home is removed");
});
