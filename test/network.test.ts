/**
 * Networking with the real CNI plugins (Debian's containernetworking-plugins) and real runc/runsc:
 * published ports from 127.0.0.1, container to container by address, --network none/host, 20 at
 * once, a killed run cleaned by the next start. Traffic stays on 127.0.0.1 and the home's bridge.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { withConfig } from "../src/config/index.js";
import {
  addNetworkList,
  CniError,
  checkNetworkList,
  containerResolvConf,
  createNetns,
  DEFAULT_PLUGIN_DIRS,
  deleteNetns,
  delNetworkList,
  execPlugin,
  homeDefaultNetwork,
  homeNetworkNames,
  listNetns,
  OWNERS_DIR,
  parseConf,
  parsePublish,
  parsePublishFlags,
  removeHomeNetwork,
  waitForHandOffs,
} from "../src/network/index.js";
import { resolveImage } from "../src/runtime/image.js";
import { type RunHandle, runContainer } from "../src/runtime/lifecycle.js";
import { parseRunOptions, type RawRunFlags } from "../src/runtime/options.js";
import { cleanupStaleRuns, readOwner } from "../src/runtime/rundir.js";
import { runtimeFor } from "../src/runtime/runtimes.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { killRunOwner } from "./helpers/home-service.js";
import { buildBusyboxTree, makeSquashfs } from "./helpers/images.js";
import { leftovers } from "./helpers/leftovers.js";
import { fetchText, homeRulesLeft, networkLeftovers, sweepDeadNetworks } from "./helpers/network.js";
import { freePort } from "./helpers/registry.js";
import { apiCall, cli, startService, stopServiceAndContainers } from "./helpers/service.js";
import { readAll } from "./helpers/streams.js";

const KINDLING = fileURLToPath(new URL("../../bin/kindling", import.meta.url));
let tmp: string;
let home: KindlingHome;
let image: string;

before(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), "kindling-net-"));
  home = new KindlingHome(path.join(tmp, "home")).ensure();
  await buildBusyboxTree(path.join(tmp, "tree"));
  image = path.join(tmp, "busybox.sqfs");
  await makeSquashfs(path.join(tmp, "tree"), image);
});

after(async () => {
  await cleanupStaleRuns(home).catch(() => {});
  const left = [...(await leftovers(home.root, image)), ...(await networkLeftovers(home))];
  await removeHomeNetwork(home);
  const rules = await homeRulesLeft(home);
  const bridge = await exec("ip", ["link", "show", homeNetworkNames(home).bridge], { allowFailure: true });
  await rm(tmp, { recursive: true, force: true });
  assert.deepEqual(await sweepDeadNetworks(), []);
  assert.deepEqual(left, []);
  assert.notEqual(bridge.code, 0, "the home's bridge is removed with the home");
  assert.deepEqual(rules, [], "the home's rules are removed with it");
});

async function options(command: string[], flags: RawRunFlags = {}) {
  return parseRunOptions(image, command, { runtime: "runc", stopTimeout: "0.5", ...flags });
}

/** Starts a container in the background; its stdout/stderr are piped and collected. */
async function start(command: string[], flags: RawRunFlags = {}) {
  const opts = await options(command, flags);
  const handle: RunHandle = runContainer({
    home,
    options: opts,
    image: await resolveImage(home, image),
    runtime: await runtimeFor(opts),
    stdio: { stdout: "pipe", stderr: "pipe" },
    notify: () => {},
  });
  const started = await handle.started;
  const output = Promise.all([readAll(started.stdout), readAll(started.stderr)]);
  const owner = await readOwner(path.join(home.runs, started.id));
  return { handle, id: started.id, network: owner?.network, output };
}

async function run(command: string[], flags: RawRunFlags = {}) {
  const c = await start(command, flags);
  const [[stdout, stderr], result] = await Promise.all([c.output, c.handle.result]);
  return { ...result, stdout, stderr, network: c.network };
}

const HTTPD = ["httpd", "-f", "-p", "80", "-h", "/data"];

test("-p, --dns and --network parse as Docker's; bad values are one-line errors", async () => {
  assert.deepEqual(parsePublish("127.0.0.1:8080:80"), {
    hostIP: "127.0.0.1",
    hostPort: 8080,
    containerPort: 80,
    protocol: "tcp",
  });
  assert.deepEqual(parsePublish("53:53/udp"), {
    hostIP: "0.0.0.0",
    hostPort: 53,
    containerPort: 53,
    protocol: "udp",
  });
  for (const [bad, msg] of [
    ["80", /expected \[HOST_IP:\]HOST_PORT:CONTAINER_PORT/],
    ["0:80", /HOST_PORT "0" is not a port number/],
    ["8080:70000", /CONTAINER_PORT "70000"/],
    ["1.2.3:80:80", /not an IPv4 address/],
    ["80:80/sctp", /unknown protocol "sctp"/],
  ] as const) {
    assert.throws(() => parsePublish(bad), msg);
  }
  assert.throws(() => parsePublishFlags(["8080:80", "127.0.0.1:8080:81"]), /already published by -p 8080:80/);
  await assert.rejects(options(["true"], { network: "bogus" }), /--network: unknown value "bogus"/);
  await assert.rejects(
    options(["true"], { runtime: "qemu", network: "host" }),
    /--network host applies to runc and runsc only/,
  );
  await assert.rejects(
    options(["true"], { network: "none", publish: ["80:80"] }),
    /-p needs --network bridge/,
  );
  await assert.rejects(options(["true"], { dns: ["dns.example"] }), /--dns dns.example: not an IP address/);
});

test("resolv.conf follows Docker's rules", () => {
  const host =
    "search corp.example\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.1.1.1\nnameserver fd00::1\noptions ndots:2\n";
  assert.equal(
    containerResolvConf(host, "bridge", []),
    "search corp.example\noptions ndots:2\nnameserver 10.1.1.1\n",
  );
  assert.equal(
    containerResolvConf("nameserver 127.0.0.1\n", "bridge", []),
    "nameserver 8.8.8.8\nnameserver 8.8.4.4\n",
  );
  assert.equal(containerResolvConf(host, "host", []), host);
  assert.equal(
    containerResolvConf(host, "bridge", ["192.0.2.53"]),
    "search corp.example\noptions ndots:2\nnameserver 192.0.2.53\n",
  );
});

test("CNI configs: a .conf becomes a list of one; a bad one names its problem", () => {
  const l = parseConf({ cniVersion: "1.0.0", name: "n", type: "bridge", bridge: "b0" }, "x.conf");
  assert.deepEqual(l.plugins, [{ type: "bridge", bridge: "b0" }]);
  assert.throws(() => parseConf({ cniVersion: "1.0.0", plugins: [] }, "y"), /y: "name" is missing/);
  assert.throws(
    () => parseConf({ cniVersion: "1.0.0", name: "n", plugins: [{}] }, "z"),
    /plugins\[0\] has no "type"/,
  );
});

test("the CNI protocol with the real plugins: ADD, CHECK, DEL; a plugin's error on one line", async () => {
  const list = await homeDefaultNetwork(home);
  const ns = `${homeNetworkNames(home).netnsPrefix}proto`;
  const netns = await createNetns(ns);
  const at = { containerId: "proto-test", netns, ifName: "eth0" };
  try {
    const result = await addNetworkList(list, at, DEFAULT_PLUGIN_DIRS);
    const ip = result.ips?.[0];
    assert.match(ip?.address ?? "", /^10\.\d+\.\d+\.\d+\/24$/);
    const inNs = await exec("ip", ["-n", ns, "-o", "-4", "addr", "show", "eth0"]);
    assert.ok(inNs.stdout.includes(ip!.address), inNs.stdout);
    await checkNetworkList(list, at, result, DEFAULT_PLUGIN_DIRS);
    await delNetworkList(list, at, DEFAULT_PLUGIN_DIRS, result);
    // DEL again (after a crash the record may be replayed): nothing left is not an error
    await delNetworkList(list, at, DEFAULT_PLUGIN_DIRS, result);
  } finally {
    await deleteNetns(ns);
  }
  assert.deepEqual(await listNetns(ns), []);
  // a namespace that does not exist: the plugin fails before it touches anything
  const bad = {
    cniVersion: "1.0.0",
    name: "x",
    type: "bridge",
    bridge: "kl-never",
    ipam: { type: "host-local" },
  };
  const at2 = { containerId: "c", netns: "/run/netns/kl-no-such-namespace", ifName: "eth0" };
  const err = await execPlugin(bad, "ADD", at2, DEFAULT_PLUGIN_DIRS).then(
    () => undefined,
    (e: unknown) => e,
  );
  await exec("ip", ["link", "delete", "kl-never"], { allowFailure: true }); // it makes the bridge first
  assert.ok(err instanceof CniError, String(err));
  assert.match(err.message, /^CNI plugin bridge ADD failed: .*kl-no-such-namespace/);
  assert.ok(!err.message.includes("\n"), err.message);
  await assert.rejects(
    execPlugin({ ...bad, type: "no-such-plugin" }, "ADD", at2, DEFAULT_PLUGIN_DIRS),
    /CNI plugin "no-such-plugin" not found in \/usr\/lib\/cni/,
  );
});

test("a server in a runc container answers on 127.0.0.1:PORT (-p); its network is recorded", async () => {
  const port = await freePort();
  const c = await start(HTTPD, { publish: [`127.0.0.1:${port}:80`] });
  try {
    assert.equal(await fetchText(`http://127.0.0.1:${port}/hello`), "hello from the image\n");
    const n = c.network!;
    assert.equal(n.mode, "bridge");
    assert.match(n.ip ?? "", /^10\.\d+\.\d+\.\d+$/);
    assert.match(n.mac ?? "", /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    assert.match(n.gateway ?? "", /^10\.\d+\.\d+\.1$/);
    assert.deepEqual(n.ports, [{ hostIP: "127.0.0.1", hostPort: port, containerPort: 80, protocol: "tcp" }]);
    // the host reaches it by address over the bridge too
    assert.equal(await fetchText(`http://${n.ip}/hello`), "hello from the image\n");
  } finally {
    c.handle.stop("SIGTERM");
    await c.handle.result;
  }
  assert.deepEqual(await networkLeftovers(home), []);
});

test("a container reaches another by address; /etc/hosts names its address; --dns", async () => {
  const server = await start(HTTPD);
  try {
    const ip = server.network!.ip!;
    const r = await run(
      ["sh", "-c", `timeout 10 wget -q -O- http://${ip}/hello && cat /etc/hosts /etc/resolv.conf`],
      {
        dns: ["192.0.2.53"],
        hostname: "client1",
      },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^hello from the image\n/);
    assert.ok(r.stdout.includes(`${r.network!.ip}\tclient1\n`), r.stdout);
    assert.ok(r.stdout.includes("nameserver 192.0.2.53\n"), r.stdout);
    assert.notEqual(r.network!.ip, ip);
  } finally {
    server.handle.stop("SIGTERM");
    await server.handle.result;
  }
});

test("--network none has only lo; --network host has the host's interfaces", async () => {
  const none = await run(["sh", "-c", "ip -o link | cut -d: -f2 | tr -d ' '"], { network: "none" });
  assert.equal(none.status, 0, none.stderr);
  assert.equal(none.stdout, "lo\n");
  assert.deepEqual(none.network, { mode: "none", netns: none.network?.netns, ports: [] });
  const hostLinks = (await exec("ip", ["-o", "link"])).stdout.split("\n").filter(Boolean).length;
  const host = await run(["sh", "-c", "ip -o link | wc -l"], { network: "host" });
  assert.equal(host.status, 0, host.stderr);
  assert.ok(Math.abs(Number(host.stdout.trim()) - hostLinks) <= 2, `${host.stdout} vs ${hostLinks}`);
});

test("20 containers started at once get distinct addresses and all answer", async () => {
  const cs = await Promise.all(Array.from({ length: 20 }, () => start(HTTPD)));
  try {
    const ips = cs.map((c) => c.network?.ip);
    assert.equal(new Set(ips).size, 20, ips.join(" "));
    const answers = await Promise.all(ips.map((ip) => fetchText(`http://${ip}/hello`, 60_000)));
    assert.deepEqual(new Set(answers), new Set(["hello from the image\n"]));
  } finally {
    for (const c of cs) c.handle.stop("SIGTERM");
    await Promise.all(cs.map((c) => c.handle.result.catch(() => {})));
  }
  assert.deepEqual(await networkLeftovers(home), []);
});

test("runsc: a server reached through -p (gVisor's sandbox in Kindling's namespace)", async () => {
  const port = await freePort();
  const c = await start(HTTPD, { runtime: "runsc", publish: [`127.0.0.1:${port}:80`] });
  try {
    assert.equal(await fetchText(`http://127.0.0.1:${port}/hello`, 60_000), "hello from the image\n");
  } finally {
    c.handle.stop("SIGTERM");
    await c.handle.result;
  }
  assert.deepEqual(await networkLeftovers(home), []);
});

test("a killed run owner leaves nothing behind after the next start", async () => {
  const port = await freePort();
  const child = spawn(
    KINDLING,
    ["run", "--runtime", "runc", "-p", `127.0.0.1:${port}:80`, image, "--", ...HTTPD],
    { env: { ...process.env, KINDLING_HOME: home.root }, stdio: "ignore" },
  );
  try {
    assert.equal(await fetchText(`http://127.0.0.1:${port}/hello`, 60_000), "hello from the image\n");
    assert.notDeepEqual(await networkLeftovers(home), [], "the run holds a namespace, a lease and rules");
  } finally {
    // the run's owner is its supervisor under the service: its crash leaves everything
    const exited = new Promise((r) => child.once("exit", r));
    await killRunOwner(home.runs).catch(() => child.kill("SIGKILL"));
    await exited;
  }
  // the next start cleans up after the dead run
  const r = await run(["true"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await networkLeftovers(home), []);
  assert.deepEqual(await leftovers(home.root, image), []);
  // the dead run's port is free again: nothing answers on it
  await assert.rejects(fetch(`http://127.0.0.1:${port}/hello`, { signal: AbortSignal.timeout(2000) }));
});

test("KINDLING_CNI_CONF_DIR: the first config of the user's directory is the network", async () => {
  const dir = path.join(tmp, "cni");
  await mkdir(dir);
  const bridge = `kl-u${process.pid % 100000}`;
  const conf = {
    cniVersion: "1.0.0",
    name: "user-net",
    plugins: [
      {
        type: "bridge",
        bridge,
        isGateway: true,
        ipam: {
          type: "host-local",
          ranges: [[{ subnet: "10.191.77.0/24" }]],
          dataDir: path.join(tmp, "user-ipam"),
        },
      },
    ],
  };
  await writeFile(path.join(dir, "10-user.conflist"), JSON.stringify(conf));
  await writeFile(path.join(dir, "99-other.conf"), "not json");
  try {
    const r = await withConfig({ cniConfDir: dir }, () => run(["sh", "-c", "ip -o -4 addr show eth0"]));
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.network?.name, "user-net");
    assert.match(r.network?.ip ?? "", /^10\.191\.77\.\d+$/);
    assert.ok(r.stdout.includes(`inet ${r.network!.ip}/24`), r.stdout);
    await writeFile(path.join(dir, "00-broken.conflist"), "{");
    await assert.rejects(
      withConfig({ cniConfDir: dir }, () => run(["true"])),
      /CNI config .*00-broken.conflist: not valid JSON/,
    );
    assert.deepEqual(await listNetns(homeNetworkNames(home).netnsPrefix), []);
  } finally {
    await exec("ip", ["link", "delete", bridge], { allowFailure: true });
  }
});

test("-p: a portmap ADD that fails beside the start fails the run with its one-line error; nothing is left", async () => {
  const dir = path.join(tmp, "cni-badport");
  await mkdir(dir);
  const bridge = `kl-p${process.pid % 100000}`;
  const ipam = path.join(tmp, "badport-ipam");
  const conf = {
    cniVersion: "1.0.0",
    name: "user-badport",
    plugins: [
      {
        type: "bridge",
        bridge,
        isGateway: true,
        ipam: { type: "host-local", ranges: [[{ subnet: "10.191.78.0/24" }]], dataDir: ipam },
      },
      // a match iptables cannot load: portmap's ADD fails once its chain has rules (its DEL does not care)
      { type: "portmap", capabilities: { portMappings: true }, conditionsV4: ["-m", "kindlingnosuchmatch"] },
    ],
  };
  await writeFile(path.join(dir, "10-badport.conflist"), JSON.stringify(conf));
  const port = await freePort();
  try {
    await assert.rejects(
      withConfig({ cniConfDir: dir }, () => run(["sleep", "30"], { publish: [`127.0.0.1:${port}:80`] })),
      (err: Error) =>
        /^CNI plugin portmap ADD failed: .*kindlingnosuchmatch/.test(err.message) && !/\n/.test(err.message),
    );
    assert.deepEqual(await listNetns(homeNetworkNames(home).netnsPrefix), []);
    for (const table of ["nat", "filter"]) {
      const rules = (await exec("iptables", ["-t", table, "-S"])).stdout;
      assert.ok(!rules.includes("user-badport"), rules);
    }
    const leases = (await readdir(path.join(ipam, "user-badport")).catch(() => [] as string[])).filter((f) =>
      /^\d+\.\d+\.\d+\.\d+$/.test(f),
    );
    assert.deepEqual(leases, []);
    assert.deepEqual(await readdir(home.runs), [], "the run's directory is gone");
  } finally {
    await exec("ip", ["link", "delete", bridge], { allowFailure: true });
  }
});

test("-p of a host port in use is refused (125) before anything is made; inspect --json shows the network", async () => {
  const port = await freePort();
  const taken = net.createServer();
  await new Promise<void>((r) => taken.listen(port, "127.0.0.1", () => r()));
  try {
    const r = await exec(
      KINDLING,
      ["run", "--runtime", "runc", "-p", `127.0.0.1:${port}:80`, image, "--", "true"],
      {
        env: { ...process.env, KINDLING_HOME: home.root, KINDLING_SOCKET: "" },
        allowFailure: true,
        timeout: 120_000,
      },
    );
    assert.equal(r.code, 125, r.stderr);
    assert.equal(
      r.stderr,
      `kindling: -p 127.0.0.1:${port}:80/tcp: host port 127.0.0.1:${port}/tcp is already in use\n`,
    );
  } finally {
    taken.close();
  }
  assert.deepEqual(await networkLeftovers(home), []);
  assert.deepEqual(
    (await readdir(home.runs)).filter((f) => !f.startsWith(".")),
    [],
  );

  // through the service: inspect --json shows address, MAC, gateway and the published port
  const svcHome = path.join(tmp, "svc");
  const service = await startService(svcHome);
  try {
    const run = await cli(svcHome, [
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
    assert.equal(run.code, 0, run.stderr);
    const id = run.stdout.trim();
    const insp = await cli(svcHome, ["inspect", id, "--json"]);
    assert.equal(insp.code, 0, insp.stderr);
    const n = (JSON.parse(insp.stdout) as { network: Record<string, unknown> }).network;
    assert.equal(n.mode, "bridge");
    assert.match(String(n.ip), /^10\.\d+\.\d+\.\d+$/);
    assert.match(String(n.mac), /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    assert.match(String(n.gateway), /^10\.\d+\.\d+\.1$/);
    assert.deepEqual(n.ports, [{ hostIP: "127.0.0.1", hostPort: port, containerPort: 80, protocol: "tcp" }]);
    assert.equal(
      (await apiCall(path.join(svcHome, "kindling.sock"), "GET", `/v1/containers/${id}`)).status,
      200,
    );
    // the same port again: another container publishes it (portmap DNATs, nothing is bound)
    const again = await cli(svcHome, [
      "run",
      "-d",
      "--runtime",
      "runc",
      "-p",
      `${port}:80`,
      image,
      "--",
      "true",
    ]);
    assert.equal(again.code, 125);
    assert.match(again.stderr, new RegExp(`host port ${port}/tcp is already published by a container`));
    assert.equal((await cli(svcHome, ["rm", "-f", id])).code, 0);
  } finally {
    await service.stop().catch(() => {});
    await stopServiceAndContainers(svcHome);
  }
  const svc = new KindlingHome(svcHome);
  await cleanupStaleRuns(svc);
  // the supervisor handed its teardown to a process of its own (src/network/teardown.ts)
  await waitForHandOffs(svcHome, 60_000);
  assert.deepEqual(await networkLeftovers(svc), []);
  await removeHomeNetwork(svc);
});

test("a kindling run (its supervisor) hands its network teardown to a process of its own; nothing is left soon after", async () => {
  const r = await exec(
    KINDLING,
    ["run", "--runtime", "runc", image, "--", "sh", "-c", "ip -o -4 addr show eth0"],
    {
      env: { ...process.env, KINDLING_HOME: home.root, KINDLING_SOCKET: "" },
      allowFailure: true,
      timeout: 120_000,
    },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /inet 10\.\d+\.\d+\.\d+\/24/);
  const deadline = Date.now() + 60_000;
  let left = await networkLeftovers(home);
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(100);
    left = await networkLeftovers(home);
  }
  assert.deepEqual(left, [], "released within 60 s of the run's exit");
  const records = (await readdir(path.join(OWNERS_DIR, "runs")).catch(() => [] as string[])).filter((f) =>
    f.startsWith(homeNetworkNames(home).netnsPrefix),
  );
  assert.deepEqual(records, []);
});

test("a home's default network as Kindling wrote it before (per-run masquerade, firewall; portmap's own mark chains) is upgraded; an edited one is kept", async () => {
  for (const [edited, second] of [
    [false, false],
    [true, false],
    [false, true],
  ] as const) {
    const h = new KindlingHome(path.join(tmp, `upgrade-${edited}-${second}`)).ensure();
    const names = homeNetworkNames(h);
    const subnet = "10.250.250.0/24";
    const first = {
      cniVersion: "1.0.0",
      name: names.network,
      plugins: [
        {
          type: "bridge",
          bridge: names.bridge,
          isGateway: true,
          ipMasq: !second,
          hairpinMode: true,
          ipam: {
            type: "host-local",
            ranges: [[{ subnet }]],
            routes: [{ dst: "0.0.0.0/0" }],
            dataDir: path.join(names.dir, "ipam"),
          },
          ...(edited ? { mtu: 1400 } : {}),
        },
        { type: "portmap", capabilities: { portMappings: true }, snat: true },
        ...(second ? [] : [{ type: "firewall", backend: "iptables" }]),
      ],
    };
    await mkdir(names.dir, { recursive: true });
    const file = path.join(names.dir, "default.conflist");
    await writeFile(file, `${JSON.stringify(first, null, 2)}\n`);
    const list = await homeDefaultNetwork(h);
    const onDisk = JSON.parse(await readFile(file, "utf8"));
    if (edited) {
      assert.deepEqual(list, first);
      assert.deepEqual(onDisk, first);
    } else {
      assert.deepEqual(
        list.plugins.map((p) => p.type),
        ["bridge", "portmap"],
      );
      assert.equal(list.plugins[0]!.ipMasq, false);
      assert.equal(list.plugins[1]!.externalSetMarkChain, `KINDLING-${names.tag}-MARK`);
      assert.match(JSON.stringify(list), /"subnet":"10\.250\.250\.0\/24"/, "the same subnet");
      assert.deepEqual(onDisk, list);
    }
  }
});
