/**
 * microVM networking with the real CNI plugins and a real QEMU VM: the guest's eth0 configured by its
 * init from NETWORK (no DHCP), a server in the VM reached through -p from 127.0.0.1, and a runc
 * container reaching the VM by address over the home's bridge. Nothing is left afterwards.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { homeNetworkNames, poolDir, readRunRecord } from "../src/network/index.js";
import { resolveImage } from "../src/runtime/image.js";
import { type RunHandle, runContainer } from "../src/runtime/lifecycle.js";
import { parseRunOptions, type RawRunFlags } from "../src/runtime/options.js";
import { cleanupStaleRuns, readOwner } from "../src/runtime/rundir.js";
import { runtimeFor } from "../src/runtime/runtimes.js";
import { decodeNetwork, encodeNetwork } from "../src/vm/agent/protocol.js";
import { killRunOwner } from "./helpers/home-service.js";
import { leftovers } from "./helpers/leftovers.js";
import { networkLeftovers, sweepDeadNetworks } from "./helpers/network.js";
import { freePort } from "./helpers/registry.js";
import { cli, startService } from "./helpers/service.js";
import { readAll } from "./helpers/streams.js";
import { type VmTestHome, vmTestHome } from "./helpers/vm-image.js";

const KINDLING = fileURLToPath(new URL("../../bin/kindling", import.meta.url));
let t: VmTestHome;

before(async () => {
  t = await vmTestHome();
});

after(async () => {
  await cleanupStaleRuns(t.home).catch(() => {});
  const left = [...(await leftovers(t.home.root)), ...(await networkLeftovers(t.home))];
  await t.cleanup();
  assert.deepEqual(await sweepDeadNetworks(), []);
  assert.deepEqual(left, []);
});

async function start(command: string[], flags: RawRunFlags) {
  const opts = await parseRunOptions("ml", command, { stopTimeout: "1", ...flags });
  const handle: RunHandle = runContainer({
    home: t.home,
    options: opts,
    image: await resolveImage(t.home, "ml"),
    runtime: await runtimeFor(opts),
    stdio: { stdout: "pipe", stderr: "pipe" },
    notify: () => {},
  });
  const started = await handle.started;
  const output = Promise.all([readAll(started.stdout), readAll(started.stderr)]);
  const owner = await readOwner(path.join(t.home.runs, started.id));
  return { handle, id: started.id, network: owner?.network, output };
}

async function fetchText(url: string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      return await (await fetch(url, { signal: AbortSignal.timeout(3000) })).text();
    } catch (err) {
      last = err;
      await sleep(200);
    }
  }
  throw new Error(`${url} did not answer within ${timeoutMs} ms: ${(last as Error)?.message}`);
}

test("NETWORK round-trips; a bad MAC is refused before it is sent", () => {
  const n = {
    iface: {
      mac: "0a:58:0a:f0:00:05",
      address: "10.240.0.5",
      prefixLength: 24,
      gateway: "10.240.0.1",
      mtu: 1500,
    },
    resolvConf: "nameserver 192.0.2.53\n",
  };
  assert.deepEqual(decodeNetwork(encodeNetwork(n)), n);
  assert.deepEqual(decodeNetwork(encodeNetwork({ resolvConf: "x\n" })), { resolvConf: "x\n" });
  assert.throws(() => encodeNetwork({ iface: { ...n.iface, mac: "zz" } }), /not a MAC address: zz/);
});

test("a server in a QEMU microVM answers on 127.0.0.1:PORT (-p), and a runc container reaches it by address; /etc/hosts names the VM's address", async () => {
  const port = await freePort();
  const vm = await start(
    ["sh", "-c", "ip -o -4 addr show eth0 >&2; cat /etc/hosts >&2; exec httpd -f -p 80 -h /data"],
    { runtime: "qemu", publish: [`127.0.0.1:${port}:80`], dns: ["192.0.2.53"], hostname: "vm1" },
  );
  try {
    const n = vm.network!;
    assert.equal(n.mode, "bridge");
    assert.match(n.ip ?? "", /^10\.\d+\.\d+\.\d+$/);
    assert.match(n.mac ?? "", /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    assert.deepEqual(n.ports, [{ hostIP: "127.0.0.1", hostPort: port, containerPort: 80, protocol: "tcp" }]);
    assert.equal(await fetchText(`http://127.0.0.1:${port}/hello`, 120_000), "hello from layer 2\n");
    // from a runc container on the same bridge, by the VM's address; the VM's resolv.conf came from --dns
    const c = await start(["sh", "-c", `timeout 20 wget -q -O- http://${n.ip}/hello`], { runtime: "runc" });
    const [[out, err], result] = await Promise.all([c.output, c.handle.result]);
    assert.equal(result.status, 0, err);
    assert.equal(out, "hello from layer 2\n");
  } finally {
    vm.handle.stop("SIGTERM");
    const [[, stderr]] = await Promise.all([vm.output, vm.handle.result.catch(() => {})]);
    assert.match(stderr, new RegExp(`inet ${vm.network?.ip?.replaceAll(".", "\\.")}/24`), stderr);
    // /etc/hosts names the VM on its address, as runc's does for a container
    assert.ok(stderr.includes(`\n${vm.network?.ip}\tvm1\n`), stderr);
  }
  assert.deepEqual(await networkLeftovers(t.home), []);
});

test("a VM with --network none has only lo, and --dns still writes its resolv.conf", async () => {
  const vm = await start(["sh", "-c", "ip -o link | cut -d: -f2 | tr -d ' '; cat /etc/resolv.conf"], {
    runtime: "qemu",
    network: "none",
    dns: ["192.0.2.53"],
  });
  const [[out, err], result] = await Promise.all([vm.output, vm.handle.result]);
  assert.equal(result.status, 0, err);
  assert.equal(out, "lo\nnameserver 192.0.2.53\n");
});

test("a SIGKILLed run owner of a VM leaves no namespace, TAP, lease or rule after the next start", async () => {
  const port = await freePort();
  const child = spawn(
    KINDLING,
    [
      "run",
      "--runtime",
      "qemu",
      "-p",
      `127.0.0.1:${port}:80`,
      "ml",
      "--",
      "httpd",
      "-f",
      "-p",
      "80",
      "-h",
      "/data",
    ],
    { env: { ...process.env, KINDLING_HOME: t.home.root }, stdio: "ignore" },
  );
  try {
    assert.equal(await fetchText(`http://127.0.0.1:${port}/hello`, 180_000), "hello from layer 2\n");
    assert.notDeepEqual(await networkLeftovers(t.home), [], "the run holds a namespace, a lease and rules");
  } finally {
    // the run's owner is its supervisor under the service: its crash leaves everything
    const exited = new Promise((r) => child.once("exit", r));
    await killRunOwner(t.home.runs).catch(() => child.kill("SIGKILL"));
    await exited;
  }
  // the next start (any run) cleans up after the dead one
  const report = await cleanupStaleRuns(t.home);
  assert.deepEqual(report.errors, []);
  assert.equal(report.cleaned.length, 1);
  assert.deepEqual(await networkLeftovers(t.home), []);
  assert.deepEqual(await leftovers(t.home.root), []);
});

test("a VM under the service takes a pooled namespace: the guest's eth0 has the pooled attachment's address", async () => {
  const svc = await startService(t.home.root, [], { KINDLING_NETWORK_POOL: "1" });
  try {
    const dir = poolDir(homeNetworkNames(t.home).tag);
    const deadline = Date.now() + 60_000;
    let marks = await readdir(dir).catch(() => [] as string[]);
    while (marks.length < 1) {
      if (Date.now() > deadline) throw new Error(`the pool did not fill within 60 s: ${svc.output()}`);
      await sleep(50);
      marks = await readdir(dir).catch(() => [] as string[]);
    }
    const rec = await readRunRecord(marks[0]!);
    const cni = rec?.resources[1];
    const address = cni?.kind === "cni" ? cni.result?.ips?.[0]?.address : undefined;
    assert.match(address ?? "", /^10\.\d+\.\d+\.\d+\/24$/);
    const r = await cli(t.home.root, [
      "run",
      "--runtime",
      "qemu",
      "ml",
      "--",
      "sh",
      "-c",
      "ip -o -4 addr show eth0",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.includes(`inet ${address}`), `${r.stdout} (pooled: ${address})`);
  } finally {
    await svc.stop();
  }
});
