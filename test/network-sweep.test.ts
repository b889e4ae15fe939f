/**
 * Leaks of homes that vanished: a run killed with SIGKILL whose KINDLING_HOME was then deleted (what a
 * killed test leaves) holds a namespace, a veth, the home's bridge, iptables rules in nat and filter and
 * a lease; no home will ever clean them. The next network setup in another home (or `kindling doctor
 * --fix`) releases them. Real CNI plugins; every check is scoped to the dead home's names and address,
 * as other tests may change the host's tables meanwhile.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  addNetworkList,
  createNetns,
  DEFAULT_PLUGIN_DIRS,
  deadRulesScript,
  deleteNetns,
  execPlugin,
  forgetRun,
  homeDefaultNetwork,
  homeNetworkNames,
  listNetns,
  loadNetwork,
  networkSettings,
  OWNERS_DIR,
  parseChains,
  parseRules,
  RunRecorder,
  removeHomeNetwork,
  startReleaseProcess,
  sweepNetwork,
} from "../src/network/index.js";
import { homeTag, recordHome } from "../src/network/owners.js";
import { resolveImage } from "../src/runtime/image.js";
import { runContainer } from "../src/runtime/lifecycle.js";
import { parseRunOptions } from "../src/runtime/options.js";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import { runtimeFor } from "../src/runtime/runtimes.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { alive } from "./helpers/home-service.js";
import { buildBusyboxTree, makeSquashfs } from "./helpers/images.js";
import { hostLines, networkLeftovers } from "./helpers/network.js";
import { freePort } from "./helpers/registry.js";
import { readAll } from "./helpers/streams.js";

const HOLDER = fileURLToPath(new URL("./helpers/net-holder.js", import.meta.url));
const KINDLING = fileURLToPath(new URL("../../bin/kindling", import.meta.url));
let tmp: string;
let image: string;
let live: KindlingHome;

before(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), "kindling-net-sweep-"));
  live = new KindlingHome(path.join(tmp, "live")).ensure();
  await buildBusyboxTree(path.join(tmp, "tree"));
  image = path.join(tmp, "busybox.sqfs");
  await makeSquashfs(path.join(tmp, "tree"), image);
});

after(async () => {
  await cleanupStaleRuns(live).catch(() => {});
  const left = await networkLeftovers(live);
  await removeHomeNetwork(live);
  await sweepNetwork({ full: true });
  await rm(tmp, { recursive: true, force: true });
  assert.deepEqual(left, []);
});

interface Held {
  child: ChildProcess;
  id: string;
  netns: string;
  ip?: string;
  veth?: string;
}

/** Starts a holder in `home` and waits (bounded) for its line. */
async function hold(home: string, args: string[]): Promise<Held> {
  const child = spawn(process.execPath, [HOLDER, home, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  const err: Buffer[] = [];
  child.stderr!.on("data", (d: Buffer) => err.push(d));
  const line = await new Promise<string>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error("the holder did not set up within 60 s")), 60_000);
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes("\n")) {
        clearTimeout(timer);
        resolve(out.split("\n")[0]!);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the holder exited (${code}): ${Buffer.concat(err).toString()}`));
    });
  });
  return { child, ...(JSON.parse(line) as Omit<Held, "child">) };
}

async function kill(h: Held): Promise<void> {
  const gone = new Promise((r) => h.child.once("exit", r));
  h.child.kill("SIGKILL");
  await gone;
}

/**
 * What `get` finds once it is empty, else after `ms` (what it still finds): another process's sweep may
 * have claimed the dead run first (every network setup sweeps) and still be releasing it.
 */
async function settled<T>(get: () => Promise<T[]>, ms = 30_000): Promise<T[]> {
  const deadline = Date.now() + ms;
  let found = await get();
  while (found.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    found = await get();
  }
  return found;
}

/** What a home's runs leave that names it: its tag, its runs' namespaces, veths and addresses. */
function needlesOf(home: KindlingHome, held: Held[]): string[] {
  const { tag } = homeNetworkNames(home);
  const out = [`kl-${tag}`, `kindling-${tag}`];
  for (const h of held) {
    if (h.veth) out.push(`${h.veth}@`);
    if (h.ip) out.push(`${h.ip}/32`);
  }
  return out;
}

test("a killed run whose home was deleted is released by the next network setup in another home", async (t) => {
  const dead = new KindlingHome(path.join(tmp, "dead"));
  const port = await freePort();
  const held = [await hold(dead.root, ["bridge", String(port)])];
  t.after(() => {
    for (const h of held) h.child.kill("SIGKILL");
  });
  held.push(await hold(dead.root, ["none"]));
  const needles = needlesOf(dead, held);
  const before = await hostLines(needles);
  const tag = homeNetworkNames(dead).tag;
  assert.ok(
    before.some((l) => l.includes(`kl-${tag}:`)),
    `the bridge exists: ${before.join("\n")}`,
  );
  assert.ok(
    before.some((l) => l.startsWith(held[1]!.netns)),
    "the none run's namespace exists",
  );
  assert.ok(
    before.some((l) => l.includes(`kindling-${tag}\\"`)),
    "nat rules name the network",
  );
  assert.ok(
    before.some((l) => l.startsWith("-A FORWARD") && l.includes(`kindling-${tag} forward`)),
    "filter rules name the network",
  );
  assert.ok(
    before.some((l) => l.includes(`${held[0]!.veth}@`)),
    "the veth exists",
  );
  for (const h of held) await kill(h);
  await rm(dead.root, { recursive: true, force: true });

  // the next run in another home: its network setup sweeps
  const opts = await parseRunOptions(image, ["true"], { runtime: "runc", network: "none" });
  const handle = runContainer({
    home: live,
    options: opts,
    image: await resolveImage(live, image),
    runtime: await runtimeFor(opts),
    stdio: { stdout: "pipe", stderr: "pipe" },
    notify: () => {},
  });
  const s = await handle.started;
  const [, , result] = await Promise.all([readAll(s.stdout), readAll(s.stderr), handle.result]);
  assert.equal(result.status, 0);

  assert.deepEqual(await settled(() => hostLines(needles)), []);
  const records = await settled(async () =>
    (await readdir(path.join(OWNERS_DIR, "runs")).catch(() => [] as string[])).filter((f) =>
      held.some((h) => f.includes(h.netns)),
    ),
  );
  assert.deepEqual(records, []);
  const homes = await settled(async () =>
    (await readdir(path.join(OWNERS_DIR, "homes")).catch(() => [] as string[])).filter((f) =>
      f.startsWith(tag),
    ),
  );
  assert.deepEqual(homes, []);
  // host-local did not make the dead home's lease directory again
  await assert.rejects(readdir(dead.root));
});

test("kindling doctor --fix releases them too, a lease kept outside the home included", async (t) => {
  const dead = new KindlingHome(path.join(tmp, "dead2"));
  const conf = path.join(tmp, "cni");
  const dataDir = path.join(tmp, "user-ipam");
  const bridge = `kl-s${process.pid % 100000}`;
  await mkdir(conf, { recursive: true });
  await writeFile(
    path.join(conf, "10-user.conflist"),
    JSON.stringify({
      cniVersion: "1.0.0",
      name: `sweep-user-${process.pid}`,
      plugins: [
        {
          type: "bridge",
          bridge,
          isGateway: true,
          ipMasq: true,
          ipam: { type: "host-local", ranges: [[{ subnet: "10.191.78.0/24" }]], dataDir },
        },
      ],
    }),
  );
  try {
    const h = await hold(dead.root, ["bridge", "", conf]);
    t.after(() => h.child.kill("SIGKILL"));
    const leases = async () =>
      (await readdir(path.join(dataDir, `sweep-user-${process.pid}`)).catch(() => [] as string[])).filter(
        (f) => /^\d+\.\d+\.\d+\.\d+$/.test(f),
      );
    assert.deepEqual(await leases(), [h.ip]);
    const needles = [h.netns, `${h.veth}@`, `id: \\"${h.id}\\"`];
    assert.notDeepEqual(await hostLines(needles), []);
    await kill(h);
    await rm(dead.root, { recursive: true, force: true });

    const r = await exec(KINDLING, ["doctor", "--fix"], {
      env: { ...process.env, KINDLING_HOME: live.root },
      timeout: 120_000,
      allowFailure: true,
    });
    // (any network setup on this host sweeps too: another test's run may have released it first, so
    // doctor's output need not name it; what counts is that nothing is left)
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await settled(() => hostLines(needles)), []);
    assert.deepEqual(await settled(leases), []);
    // nothing more to do: a second run says so
    const again = await exec(KINDLING, ["doctor", "--fix"], {
      env: { ...process.env, KINDLING_HOME: live.root },
      timeout: 120_000,
    });
    assert.doesNotMatch(again.stdout, new RegExp(h.id));
  } finally {
    await exec("ip", ["link", "delete", bridge], { allowFailure: true });
  }
});

test("which rules are dead: by the network's tag, the run's id, and addresses no host prefix covers", () => {
  const save = [
    '-A POSTROUTING -s 10.200.1.2/32 -m comment --comment "name: \\"kindling-aaaaaaaa\\" id: \\"r1\\"" -j CNI-0123456789abcdef01234567',
    '-A CNI-0123456789abcdef01234567 -d 10.200.1.0/24 -m comment --comment "name: \\"kindling-aaaaaaaa\\" id: \\"r1\\"" -j ACCEPT',
    '-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"kindling-aaaaaaaa\\" id: \\"r1\\"" -m multiport --dports 8080 -j CNI-DN-0123456789abcdef0123',
    "-A CNI-DN-0123456789abcdef0123 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.200.1.2:80",
    '-A POSTROUTING -s 10.201.0.0/24 ! -d 10.201.0.0/24 -m comment --comment "kindling-bbbbbbbb masquerade" -j MASQUERADE',
    '-A POSTROUTING -s 10.9.9.9/32 -m comment --comment "name: \\"other\\" id: \\"r2\\"" -j CNI-fedcba9876543210fedcba98',
    '-A POSTROUTING -s 10.9.9.8/32 -m comment --comment "name: \\"other\\" id: \\"r3\\"" -j CNI-aaaabbbbccccddddeeeeffff',
    "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE",
    // the homes' own mark chains (homerules.ts), portmap's externalSetMarkChain: a dead home's goes last
    '-A KINDLING-aaaaaaaa-MARK -m comment --comment "kindling-aaaaaaaa mark" -j MARK --set-xmark 0x2000/0x2000',
    '-A KINDLING-bbbbbbbb-MARK -m comment --comment "kindling-bbbbbbbb mark" -j MARK --set-xmark 0x2000/0x2000',
    "-A CNI-DN-0123456789abcdef0123 -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j KINDLING-aaaaaaaa-MARK",
  ];
  const rules = parseRules(save.join("\n"));
  const live = {
    tagIsDead: (t: string) => t === "aaaaaaaa",
    runIsDead: (id: string) => id === "r2",
    addressIsDead: (ip: string) => ip === "10.224.81.2",
  };
  const { script } = deadRulesScript("nat", rules, live);
  const lines = script.split("\n");
  assert.equal(lines[0], "*nat");
  assert.equal(lines.at(-2), "COMMIT");
  // the jumps into per-attachment chains go, then the chains; a live home's and another run's stay
  assert.ok(lines.includes(save[0]!.replace("-A ", "-D ")));
  assert.ok(lines.includes(save[2]!.replace("-A ", "-D ")));
  assert.ok(lines.includes(save[5]!.replace("-A ", "-D ")));
  for (const c of [
    "CNI-0123456789abcdef01234567",
    "CNI-DN-0123456789abcdef0123",
    "CNI-fedcba9876543210fedcba98",
  ]) {
    assert.ok(lines.indexOf(`-F ${c}`) < lines.indexOf(`-X ${c}`), c);
    assert.ok(lines.indexOf(`-X ${c}`) > lines.indexOf(save[0]!.replace("-A ", "-D ")), c);
  }
  assert.ok(lines.indexOf("-F KINDLING-aaaaaaaa-MARK") < lines.indexOf("-X CNI-DN-0123456789abcdef0123"));
  assert.ok(lines.includes("-X KINDLING-aaaaaaaa-MARK"));
  assert.ok(!script.includes("KINDLING-bbbbbbbb-MARK"));
  // a dead home's chain left empty (an older sweep deleted only its rule) goes too, from the chain list
  const empty = deadRulesScript("nat", [], live, [
    "KINDLING-aaaaaaaa-MARK",
    "KINDLING-bbbbbbbb-MARK",
    "CNI-HOSTPORT-DNAT",
  ]);
  assert.equal(empty.script, "*nat\n-F KINDLING-aaaaaaaa-MARK\n-X KINDLING-aaaaaaaa-MARK\nCOMMIT\n");
  assert.deepEqual(parseChains(":PREROUTING ACCEPT [0:0]\n:KINDLING-aaaaaaaa-MARK - [0:0]\n-A X -j Y\n"), [
    "PREROUTING",
    "KINDLING-aaaaaaaa-MARK",
  ]);
  assert.ok(!script.includes("kindling-bbbbbbbb"));
  assert.ok(!script.includes("CNI-aaaabbbbccccddddeeeeffff"));
  assert.ok(!script.includes("CNI-HOSTPORT-MASQ"));
  // filter: the firewall plugin's address rules
  const fw = parseRules(
    [
      "-A CNI-FORWARD -d 10.224.81.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
      "-A CNI-FORWARD -s 10.224.81.2/32 -j ACCEPT",
      "-A CNI-FORWARD -s 10.224.81.3/32 -j ACCEPT",
    ].join("\n"),
  );
  const f = deadRulesScript("filter", fw, live);
  assert.equal(f.count, 2);
  assert.ok(!f.script.includes("10.224.81.3"));
  assert.deepEqual(deadRulesScript("filter", [], live), { script: "", count: 0 });
});

test("a handed-off teardown whose home is deleted meanwhile does not make the home's lease directory again", async () => {
  const gone = new KindlingHome(path.join(tmp, "gone")).ensure();
  const list = await homeDefaultNetwork(gone);
  const name = `${homeNetworkNames(gone).netnsPrefix}ho`;
  const netns = await createNetns(name);
  const at = { containerId: "ho", netns, ifName: "eth0", capabilityArgs: { portMappings: [] } };
  const recorder = new RunRecorder(gone.root, "ho", name);
  const cni = { kind: "cni" as const, list, attachment: at, pluginDirs: DEFAULT_PLUGIN_DIRS };
  await recorder.add({ kind: "netns", name }, cni);
  try {
    (cni as { result?: unknown }).result = await addNetworkList(list, at, DEFAULT_PLUGIN_DIRS);
    await recorder.save();
    await rm(gone.root, { recursive: true, force: true }); // before the process runs its DEL
    const pid = await startReleaseProcess(name, recorder.resources, gone.root);
    assert.ok(pid !== undefined);
    // it waits (2 s at most) for the record to name it, then releases; bounded
    const deadline = Date.now() + 30_000;
    while (alive(pid!) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(alive(pid!), false, "the release process ended within 30 s");
    await assert.rejects(readdir(gone.root), "the home was not made again");
    assert.deepEqual(await listNetns(name), []);
    assert.deepEqual(
      (await readdir(path.join(OWNERS_DIR, "runs"))).filter((f) => f.startsWith(name)),
      [],
      "the record and the release files are gone",
    );
  } finally {
    await deleteNetns(name).catch(() => {});
    await forgetRun(name);
    await removeHomeNetwork(gone);
  }
});

test("a full sweep releases a live home's lease that no run holds, and keeps a held one", async () => {
  const home = new KindlingHome(path.join(tmp, "leases")).ensure();
  const list = await loadNetwork(home, networkSettings()); // (records the home, as a run does)
  const dir = path.join(home.root, "network", "ipam", list.name);
  const leaseOf = async (id: string) => {
    for (const f of await readdir(dir).catch(() => [] as string[])) {
      if ((await readFile(path.join(dir, f), "utf8").catch(() => "")).startsWith(`${id}\r\n`)) return f;
    }
    return undefined;
  };
  // host-local's own ADD, as the bridge plugin delegates it: a lease, with and without a run record
  const ipamConf = { ...list.plugins[0]!, type: "host-local", name: list.name, cniVersion: list.cniVersion };
  const lease = (id: string) =>
    execPlugin(
      ipamConf,
      "ADD",
      { containerId: id, netns: "/proc/self/ns/net", ifName: "eth0" },
      DEFAULT_PLUGIN_DIRS,
    );
  const name = `${homeNetworkNames(home).netnsPrefix}held`;
  const recorder = new RunRecorder(home.root, "held", name);
  const at = { containerId: "held", netns: `/run/netns/${name}`, ifName: "eth0" };
  await recorder.add({ kind: "cni", list, attachment: at, pluginDirs: DEFAULT_PLUGIN_DIRS });
  try {
    await lease("held");
    await lease("unheld");
    const unheld = await leaseOf("unheld");
    assert.ok(unheld && (await leaseOf("held")), (await readdir(dir).catch(() => [])).join(" "));
    const report = await sweepNetwork({ full: true });
    assert.ok(
      report.released.some((l) => l.startsWith(`IPAM lease ${unheld} of unheld`)),
      report.released.join("; "),
    );
    assert.equal(await leaseOf("unheld"), undefined, "the lease no run holds is released");
    assert.ok(await leaseOf("held"), "the held one is kept");
  } finally {
    await execPlugin(ipamConf, "DEL", { ...at, netns: "" }, DEFAULT_PLUGIN_DIRS).catch(() => {});
    await forgetRun(name);
    await removeHomeNetwork(home);
  }
});

test("a full sweep deletes an empty kl- bridge no home record names, and keeps a recorded home's bridge", async () => {
  const orphan = `kl-${randomBytes(4).toString("hex")}`;
  await exec("ip", ["link", "add", orphan, "type", "bridge"]);
  try {
    const ownBridge = `kl-${homeTag(live.root)}`;
    await recordHome(live.root);
    const hadOwn = (await exec("ip", ["link", "show", ownBridge], { allowFailure: true })).code === 0;
    // a run's quick sweep leaves it: only a full one (doctor --fix, the test kit) looks
    await sweepNetwork({});
    assert.equal((await exec("ip", ["link", "show", orphan], { allowFailure: true })).code, 0);
    const report = await sweepNetwork({ full: true });
    assert.ok(report.released.includes(`bridge ${orphan}`), report.released.join("; "));
    assert.notEqual((await exec("ip", ["link", "show", orphan], { allowFailure: true })).code, 0);
    const hasOwn = (await exec("ip", ["link", "show", ownBridge], { allowFailure: true })).code === 0;
    assert.equal(hasOwn, hadOwn, "a recorded home's bridge stays");
  } finally {
    await exec("ip", ["link", "delete", orphan], { allowFailure: true });
  }
});
