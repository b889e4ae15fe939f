/**
 * Network benchmark (not a test): what networking adds to a run, and throughput over the bridge.
 *   node dist/bench/network.js [--n 20] [--gib 1] [--no-vm] [--host-only | --cli-only] [--trace M]
 *     [--first M] [--baseline DIR]
 * --cli-only: the end-to-end rows only; --trace M: a step table of M traced CLI runs per variant;
 * --first M: a fresh home's first bridged run; --baseline DIR: the CLI rows of another build beside.
 * "Warm": the home's bridge and default network exist (a first run made them) and the plugins are in
 * the page cache; every row is a median of interleaved rounds in one run of this script.
 * Rows:
 *   setup+teardown (host side): what a runc run with --network bridge adds (setUpNetwork: the namespace
 *     with lo up, the CNI chain bridge/host-local, portmap only with -p; then DEL and the namespace's
 *     removal), beside the same work done as it was first landed (`ip netns add`, the loopback plugin,
 *     the bridge plugin's per-run masquerade, the firewall plugin): ratios in one interleaved run.
 *     A breakdown of each step of both. For a VM, plus the TAP wired to the veth (tap.ts). Design B (a
 *     TAP enslaved to the bridge, an address from host-local called directly) measured beside it.
 *   end to end: `true` with --network bridge vs host (runc), through the API in-process (teardown inline)
 *     and through the CLI (`kindling run`: the home's service and a supervisor per run, which hands the
 *     network's teardown off).
 *   throughput: 1 GiB over TCP, host -> runc container over the bridge and runc container -> QEMU VM,
 *     as a ratio to the same transfer over plain loopback on the host (busybox nc on both ends).
 */
import { spawn } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { benchArgs } from "../src/bench/args.js";
import { setUpNetwork } from "../src/network/attach.js";
import {
  addNetworkList,
  type CniConfList,
  delNetworkList,
  execPlugin,
  pluginConfig,
} from "../src/network/cni.js";
import {
  DEFAULT_PLUGIN_DIRS,
  homeDefaultNetwork,
  homeNetworkNames,
  networkSettings,
  removeHomeNetwork,
} from "../src/network/conflist.js";
import { poolReady, timeNetworkSetup } from "../src/network/cost.js";
import { createNetns, deleteNetns } from "../src/network/netns.js";
import { OWNERS_DIR, poolDir, RunRecorder } from "../src/network/owners.js";
import { startNetworkPool } from "../src/network/pool.js";
import { type NetworkResource, releaseNetworkResource } from "../src/network/resources.js";
import { wireTap } from "../src/network/tap.js";
import { teardownInBackground } from "../src/network/teardown.js";
import { resolveImage } from "../src/runtime/image.js";
import { runContainer } from "../src/runtime/lifecycle.js";
import { parseRunOptions, type RawRunFlags } from "../src/runtime/options.js";
import { readOwner } from "../src/runtime/rundir.js";
import { runtimeFor } from "../src/runtime/runtimes.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { Scope } from "../src/util/scope.js";
import { buildBusyboxTree, makeSquashfs } from "../test/helpers/images.js";
import { freePort } from "../test/helpers/registry.js";
import { stopServiceAndContainers } from "../test/helpers/service.js";
import { readAll } from "../test/helpers/streams.js";

const args = benchArgs(
  "node dist/bench/network.js [--n 20] [--gib 1] [--no-vm] [--host-only | --cli-only] [--trace M] [--first M] [--baseline DIR]",
  { options: ["n", "gib", "trace", "first", "baseline"], switches: ["no-vm", "host-only", "cli-only"] },
);
const N = args.num("n", 20);
const BYTES = Math.round(args.num("gib", 1) * 2 ** 30);
const VM = !args.has("no-vm");
/** Only the host-side rows (no end-to-end runs, no throughput). */
const HOST_ONLY = args.has("host-only");
/** Only the CLI rows (and --trace): no host-side rows, no throughput. */
const CLI_ONLY = args.has("cli-only");
/** After the CLI rows, this many more `kindling run`s per variant with KINDLING_TRACE: a step table. */
const TRACE_RUNS = args.num("trace", 0);
/**
 * `--first M`: M fresh homes per build (this one and --baseline's), interleaved: the service is
 * started by a `--network none` run, left 2 s (an eager pool fills meanwhile), then the home's first
 * bridged `kindling run` is timed: what a lazily started pool costs that run.
 */
const FIRST_RUNS = args.num("first", 0);
/** Another build of Kindling (a worktree of an older commit, built): its CLI rows beside this build's. */
const BASELINE = args.get("baseline");
const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const now = () => Number(process.hrtime.bigint()) / 1e6;

/** A holder that releases like RunDir does, without owner.json. */
function holder(scope: Scope) {
  return {
    async hold(s: Scope, r: NetworkResource) {
      s.defer("net", () => releaseNetworkResource(r));
    },
    async update(r: NetworkResource, change: Partial<NetworkResource>) {
      Object.assign(r, change);
    },
    scope,
  };
}

async function main(): Promise<void> {
  const tmp = await mkdtemp(path.join(tmpdir(), "kindling-bench-net-"));
  const home = new KindlingHome(path.join(tmp, "home")).ensure();
  await rm(home.kernel, { recursive: true, force: true });
  await symlink(path.join(REPO, ".cache", "vm-test-home", "kernel"), home.kernel).catch(() => {});
  await buildBusyboxTree(path.join(tmp, "tree"));
  const image = path.join(tmp, "busybox.sqfs");
  await makeSquashfs(path.join(tmp, "tree"), image);
  const names = homeNetworkNames(home);
  const list = await homeDefaultNetwork(home);
  const out: string[] = [];
  const row = (label: string, value: string) => out.push(`  ${label.padEnd(72)} ${value}`);
  try {
    if (!CLI_ONLY) {
      // -- host-side setup + teardown, runc shape and VM shape, and design B
      let seq = 0;
      const setupMs: number[] = [];
      const runcShape = async (ports: boolean, vm: boolean) => {
        const t0 = now();
        let t1 = 0;
        await Scope.with(async (scope) => {
          const net = await setUpNetwork({
            home,
            runId: `b${process.pid}${seq++}`,
            mode: "bridge",
            ports: ports
              ? [{ hostIP: "127.0.0.1", hostPort: 40000 + (seq % 1000), containerPort: 80, protocol: "tcp" }]
              : [],
            settings: networkSettings(),
            holder: holder(scope),
            scope,
            pool: false,
          });
          if (vm) await wireTap(net.netnsName!, "eth0");
          t1 = now();
          if (!ports && !vm) setupMs.push(t1 - t0);
        });
        return now() - t0;
      };
      // the CLI's foreground run: the teardown is handed to a process of its own (teardown.ts); the row is
      // setup + hand-off; the released process's own time is measured apart, and waited for before the next round
      const handedOffMs: number[] = [];
      const backgroundMs: number[] = [];
      const handedOff = async () => {
        const t0 = now();
        const runId = `h${process.pid}${seq++}`;
        teardownInBackground(true);
        try {
          await Scope.with(async (scope) => {
            await setUpNetwork({
              home,
              runId,
              mode: "bridge",
              ports: [],
              settings: networkSettings(),
              holder: holder(scope),
              scope,
              pool: false,
            });
          });
        } finally {
          teardownInBackground(false);
        }
        const t1 = now();
        handedOffMs.push(t1 - t0);
        const record = path.join(OWNERS_DIR, "runs", `${names.netnsPrefix}${runId}.json`);
        for (
          let i = 0;
          i < 3000 &&
          (await readFile(record).then(
            () => true,
            () => false,
          ));
          i++
        )
          await sleep(5);
        backgroundMs.push(now() - t1);
      };
      const designB = async () => {
        const t0 = now();
        const id = `tb${process.pid % 10000}${seq++ % 100}`;
        // host-local reads the parent plugin's config (its "ipam" key)
        const conf = {
          ...list.plugins[0]!,
          type: "host-local",
          name: list.name,
          cniVersion: list.cniVersion,
        };
        const at = { containerId: id, netns: "/proc/self/ns/net", ifName: "eth0" }; // only checked to be set
        await exec("ip", ["-batch", "-"], {
          input: `tuntap add dev ${id} mode tap\nlink set dev ${id} master ${names.bridge} up\n`,
        });
        try {
          await execPlugin(conf, "ADD", at, DEFAULT_PLUGIN_DIRS);
          // portmap and firewall would be called with a made-up prevResult here; DEL mirrors ADD
          await execPlugin(conf, "DEL", at, DEFAULT_PLUGIN_DIRS);
        } finally {
          await exec("ip", ["link", "delete", id]);
        }
        return now() - t0;
      };
      // as first landed: `ip netns add`, loopback plugin beside the chain, per-run masquerade and firewall
      const before: CniConfList = {
        ...list,
        plugins: [
          { ...list.plugins[0]!, ipMasq: true },
          { type: "firewall", backend: "iptables" },
        ],
      };
      const loopbackList: CniConfList = {
        cniVersion: list.cniVersion,
        name: "lo",
        plugins: [{ type: "loopback" }],
      };
      const steps: Record<string, number[]> = {};
      const step = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
        const t0 = now();
        const v = await fn();
        steps[name] = [...(steps[name] ?? []), now() - t0];
        return v;
      };
      const beforeSetupMs: number[] = [];
      const beforeShape = async () => {
        const t0 = now();
        const ns = `${names.netnsPrefix}o${seq++}`;
        const at = { containerId: ns, netns: `/run/netns/${ns}`, ifName: "eth0" };
        await step("before: ip netns add", () => exec("ip", ["netns", "add", ns]));
        const [r] = await Promise.all([
          step("before: bridge+host-local ADD (per-run masquerade), firewall ADD", () =>
            addNetworkList(before, at, DEFAULT_PLUGIN_DIRS),
          ),
          step("before: loopback ADD (beside the chain)", () =>
            addNetworkList(loopbackList, { ...at, ifName: "lo" }, DEFAULT_PLUGIN_DIRS),
          ),
        ]);
        beforeSetupMs.push(now() - t0);
        await step("before: firewall DEL, bridge+host-local DEL", () =>
          delNetworkList(before, at, DEFAULT_PLUGIN_DIRS, r),
        );
        await step("before: ip netns delete", () => exec("ip", ["netns", "delete", ns]));
        return now() - t0;
      };
      const nowSteps = async () => {
        const ns = `${names.netnsPrefix}s${seq++}`;
        const at = { containerId: ns, netns: `/run/netns/${ns}`, ifName: "eth0" };
        await step("now: namespace with lo up (unshare + ip)", () => createNetns(ns));
        const r = await step("now: bridge+host-local ADD", () =>
          addNetworkList(list, at, DEFAULT_PLUGIN_DIRS),
        );
        await step("now: bridge+host-local DEL", () => delNetworkList(list, at, DEFAULT_PLUGIN_DIRS, r));
        await step("now: ip netns delete", () => deleteNetns(ns));
      };
      await runcShape(true, true); // warm: bridge made, plugins cached
      await beforeShape();
      await nowSteps();
      for (const k of Object.keys(steps)) steps[k] = [];
      beforeSetupMs.length = 0;
      setupMs.length = 0;
      await handedOff();
      handedOffMs.length = 0;
      backgroundMs.length = 0;
      // portmap's ADD and DEL alone on one attached namespace: with the home's mark chain as its
      // externalSetMarkChain (the default network now) and with its own SETMARK/MASQ chains (as before)
      const pmNs = `${names.netnsPrefix}pm${process.pid}`;
      const pmAt = { containerId: `pm${process.pid}`, netns: `/run/netns/${pmNs}`, ifName: "eth0" };
      // recorded as a run's (owners.ts): a sweep meanwhile must not take its lease for an unheld one
      const pmRes: NetworkResource[] = [
        { kind: "netns", name: pmNs },
        { kind: "cni", list, attachment: pmAt, pluginDirs: DEFAULT_PLUGIN_DIRS },
      ];
      await new RunRecorder(home.root, pmAt.containerId, pmNs).add(...pmRes);
      await createNetns(pmNs);
      const pmResult = await addNetworkList(list, pmAt, DEFAULT_PLUGIN_DIRS);
      Object.assign(pmRes[1]!, { result: pmResult });
      const portmapOnce = async (own: boolean, port: number) => {
        const { externalSetMarkChain: _x, ...ownChains } = list.plugins[1]!;
        const plugin = own ? ownChains : list.plugins[1]!;
        const at = {
          ...pmAt,
          capabilityArgs: {
            portMappings: [{ hostIP: "127.0.0.1", hostPort: port, containerPort: 80, protocol: "tcp" }],
          },
        };
        const conf = pluginConfig(list, plugin, at, pmResult);
        const t0 = now();
        await execPlugin(conf, "ADD", at, DEFAULT_PLUGIN_DIRS);
        const t1 = now();
        await execPlugin(conf, "DEL", at, DEFAULT_PLUGIN_DIRS);
        return { add: t1 - t0, del: now() - t1 };
      };
      const pm = { add: [] as number[], del: [] as number[], addOwn: [] as number[], delOwn: [] as number[] };
      // the service's pool (pool.ts), here kept by this process: one ready namespace, refilled between rounds
      const pool = startNetworkPool(home, { size: 1 });
      const t = {
        pooled: [] as number[],
        pooledP: [] as number[],
        runc: [] as number[],
        before: [] as number[],
        runcP: [] as number[],
        vm: [] as number[],
        b: [] as number[],
      };
      for (let i = 0; i < N; i++) {
        t.runc.push(await runcShape(false, false));
        t.before.push(await beforeShape());
        await handedOff();
        await nowSteps();
        t.runcP.push(await runcShape(true, false));
        t.vm.push(await runcShape(false, true));
        t.b.push(await designB());
        await poolReady(home, 1);
        t.pooled.push((await timeNetworkSetup(home, true)).setupMs);
        await poolReady(home, 1);
        const port = {
          hostIP: "127.0.0.1",
          hostPort: 42000 + (i % 1000),
          containerPort: 80,
          protocol: "tcp" as const,
        };
        const p = await timeNetworkSetup(home, true, [port]);
        t.pooledP.push(p.setupMs + p.teardownMs);
        // each first in turn: the second may pay (or gain) for what the first left
        const pmPort = 44000 + (i % 1000);
        let mine: { add: number; del: number };
        let own: { add: number; del: number };
        if (i % 2 === 0) {
          mine = await portmapOnce(false, pmPort);
          own = await portmapOnce(true, pmPort);
        } else {
          own = await portmapOnce(true, pmPort);
          mine = await portmapOnce(false, pmPort);
        }
        pm.add.push(mine.add);
        pm.del.push(mine.del);
        pm.addOwn.push(own.add);
        pm.delOwn.push(own.del);
      }
      await pool.stop();
      for (const r of [...pmRes].reverse()) await releaseNetworkResource(r);
      const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`;
      row(
        "network setup+teardown, runc, now (netns with lo, bridge+host-local)",
        `${median(t.runc).toFixed(1)} ms (${ratio(median(t.runc), median(t.before))} of before)`,
      );
      row(
        "  of which setup (before the process can start)",
        `${median(setupMs).toFixed(1)} ms (${ratio(median(setupMs), median(beforeSetupMs))} of before)`,
      );
      row(
        "  setup from the service's pool (a ready namespace taken: record updates)",
        `${median(t.pooled).toFixed(1)} ms (${ratio(median(t.pooled), median(setupMs))} of setup)`,
      );
      row(
        "  setup + teardown handed to a process of its own (a supervised run: kindling run)",
        `${median(handedOffMs).toFixed(1)} ms (${ratio(median(handedOffMs), median(t.before))} of before)`,
      );
      row(
        "    that process (sh: the plugins' DEL, ip netns delete), hand-off to the record's removal",
        `${median(backgroundMs).toFixed(1)} ms`,
      );
      row(
        "  before: ip netns add, lo plugin, bridge with per-run masquerade, firewall",
        `${median(t.before).toFixed(1)} ms (setup ${median(beforeSetupMs).toFixed(1)} ms)`,
      );
      for (const [k, v] of Object.entries(steps)) row(`    ${k}`, `${median(v).toFixed(1)} ms`);
      const spawnMs: number[] = [];
      for (let i = 0; i < N; i++) {
        const t0 = now();
        await exec("true", []);
        spawnMs.push(now() - t0);
      }
      row("  (one spawn of /bin/true on this host now, for scale)", `${median(spawnMs).toFixed(1)} ms`);
      const goMs: number[] = [];
      for (let i = 0; i < N; i++) {
        const t0 = now();
        await exec("/usr/lib/cni/loopback", [], { env: { CNI_COMMAND: "VERSION" }, input: "{}" });
        goMs.push(now() - t0);
      }
      row("  (one CNI plugin process, loopback VERSION, for scale)", `${median(goMs).toFixed(1)} ms`);
      row("  same with one -p (portmap too)", `${median(t.runcP).toFixed(1)} ms`);
      row(
        "  same with one -p, from the pool (portmap ADD on a ready namespace), teardown inline",
        `${median(t.pooledP).toFixed(1)} ms (${ratio(median(t.pooledP), median(t.runcP))})`,
      );
      row(
        "  portmap ADD / DEL of one -p, externalSetMarkChain = the home's chain (now)",
        `${median(pm.add).toFixed(1)} / ${median(pm.del).toFixed(1)} ms (ADD ${ratio(median(pm.add), median(pm.addOwn))} of before)`,
      );
      row(
        "  portmap ADD / DEL of one -p, its own SETMARK/MASQ chains (before)",
        `${median(pm.addOwn).toFixed(1)} / ${median(pm.delOwn).toFixed(1)} ms`,
      );
      row("  VM, design A: same + TAP wired to the veth with tc (chosen)", `${median(t.vm).toFixed(1)} ms`);
      row(
        "  VM, design B parts: TAP on the bridge + host-local ADD/DEL only",
        `${median(t.b).toFixed(1)} ms`,
      );
    }
    if (HOST_ONLY) return;
    // -- end to end, runc: bridge vs host
    const run = async (flags: RawRunFlags, command: string[]) => {
      const opts = await parseRunOptions(image, command, { runtime: "runc", ...flags });
      const h = runContainer({
        home,
        options: opts,
        image: await resolveImage(home, image),
        runtime: await runtimeFor(opts),
        stdio: { stdout: "pipe", stderr: "pipe" },
        notify: () => {},
      });
      const s = await h.started;
      const owner = await readOwner(path.join(home.runs, s.id));
      const done = Promise.all([readAll(s.stdout), readAll(s.stderr), h.result]);
      return { h, owner, done };
    };
    const e2e = async (network: string) => {
      const t0 = now();
      const r = await run({ network }, ["true"]);
      await r.done;
      return now() - t0;
    };
    await e2e("bridge");
    await e2e("host");
    const e = { bridge: [] as number[], host: [] as number[] };
    for (let i = 0; i < N; i++) {
      e.bridge.push(await e2e("bridge"));
      e.host.push(await e2e("host"));
    }
    const eb = median(e.bridge);
    const eh = median(e.host);
    row("runContainer `true` in-process, runc, --network host (no networking)", `${eh.toFixed(1)} ms`);
    row(
      "runContainer `true` in-process, runc, --network bridge (teardown inline)",
      `${eb.toFixed(1)} ms (+${(eb - eh).toFixed(1)} ms)`,
    );
    // the CLI: a process per run, through the home's service (auto-started by the first run) and a
    // supervisor per container, which hands the teardown off (waited for between rounds, as is the
    // pool's refill: each round starts on a settled home). The home's service keeps its pool
    // (KINDLING_NETWORK_POOL, default 2); a second home's service keeps none (=0); with --baseline DIR,
    // a third home is run by DIR's build (another commit, built there): bridge vs host in each, interleaved
    const noPool = new KindlingHome(path.join(tmp, "nopool")).ensure();
    const baseHome = new KindlingHome(path.join(tmp, "baseline"));
    if (BASELINE) baseHome.ensure();
    const binOf = (h: KindlingHome) => path.join(h === baseHome ? BASELINE! : REPO, "bin", "kindling");
    const cli = async (
      h: KindlingHome,
      network: string,
      extraEnv: Record<string, string> = {},
      flags: string[] = [],
    ) => {
      const t0 = now();
      await exec(
        process.execPath,
        [binOf(h), "run", "--runtime", "runc", "--network", network, ...flags, image, "--", "true"],
        {
          env: {
            ...process.env,
            KINDLING_HOME: h.root,
            KINDLING_SOCKET: "",
            ...(h === noPool ? { KINDLING_NETWORK_POOL: "0" } : {}),
            ...extraEnv,
          },
        },
      );
      const ms = now() - t0;
      await settledHome(h, h === noPool ? 0 : 2);
      return ms;
    };
    const homes = BASELINE ? [home, noPool, baseHome] : [home, noPool];
    for (const h of homes) for (const n of ["bridge", "host"]) await cli(h, n);
    const c = new Map(
      homes.map((h) => [h, { bridge: [] as number[], host: [] as number[], publish: [] as number[] }]),
    );
    // with one -p: the pooled homes (this build's, the baseline's), a free port each time
    const publish = async (h: KindlingHome) =>
      cli(h, "bridge", {}, ["-p", `127.0.0.1:${await freePort()}:80`]);
    for (let i = 0; i < N; i++) {
      for (const h of homes) {
        for (const n of ["bridge", "host"] as const) c.get(h)![n].push(await cli(h, n));
        if (h !== noPool) c.get(h)!.publish.push(await publish(h));
      }
    }
    // the median of each round's own difference too: the load drifts between rounds, less within one
    const delta = (b: number[], h: number[]) => {
      const [mb, mh] = [median(b), median(h)];
      const paired = median(b.map((x, i) => x - h[i]!));
      const sign = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(1)}`;
      return `${mb.toFixed(1)} ms (${sign(mb - mh)} ms, ${(mb / mh).toFixed(2)}x of host; per round ${sign(paired)} ms)`;
    };
    const label = {
      pool: "kindling run ... (CLI), --network bridge (pooled namespace, teardown handed off)",
      nopool: "  ... bridge (set up per run, teardown handed off)",
    };
    row(
      "kindling run --runtime runc IMAGE -- true (CLI, via the service), --network host",
      `${median(c.get(home)!.host).toFixed(1)} ms`,
    );
    row(label.pool, delta(c.get(home)!.bridge, c.get(home)!.host));
    row(
      "  ... with one -p 127.0.0.1:PORT:80 (pooled; portmap beside the start)",
      delta(c.get(home)!.publish, c.get(home)!.host),
    );
    row(
      "  a home whose service keeps no pool (KINDLING_NETWORK_POOL=0): host",
      `${median(c.get(noPool)!.host).toFixed(1)} ms`,
    );
    row(label.nopool, delta(c.get(noPool)!.bridge, c.get(noPool)!.host));
    if (BASELINE) {
      const b = c.get(baseHome)!;
      row(`  the baseline build (${BASELINE}), pooled: host`, `${median(b.host).toFixed(1)} ms`);
      row("  ... bridge (its pool, its hand-off)", delta(b.bridge, b.host));
      row("  ... with one -p (its pool, portmap before the start)", delta(b.publish, b.host));
    }

    if (FIRST_RUNS > 0) {
      const builds: [string, string][] = [["this build (pool started by the first bridged run)", REPO]];
      if (BASELINE) builds.push([`the baseline (${BASELINE}: pool filled at service start)`, BASELINE]);
      const first = new Map(builds.map(([b]) => [b, [] as number[]]));
      for (let i = 0; i < FIRST_RUNS; i++) {
        for (const [j, [label, dir]] of builds.entries()) {
          const fresh = new KindlingHome(path.join(tmp, `first-${i}-${j}`)).ensure();
          const run = (network: string) =>
            exec(
              process.execPath,
              [
                path.join(dir, "bin", "kindling"),
                "run",
                "--runtime",
                "runc",
                "--network",
                network,
                image,
                "--",
                "true",
              ],
              { env: { ...process.env, KINDLING_HOME: fresh.root, KINDLING_SOCKET: "" } },
            );
          try {
            await run("none");
            await sleep(2000);
            const t0 = now();
            await run("bridge");
            first.get(label)!.push(now() - t0);
          } finally {
            await stopServiceAndContainers(fresh.root).catch(() => {});
            await removeHomeNetwork(fresh).catch(() => {});
          }
        }
      }
      const base = median(first.get(builds[0]![0])!);
      for (const [label] of builds) {
        const m = median(first.get(label)!);
        row(
          `a fresh home's first bridged kindling run, service up 2 s: ${label}`,
          `${m.toFixed(1)} ms (${(m / base).toFixed(2)}x)`,
        );
      }
    }
    if (TRACE_RUNS > 0) {
      const traced: [string, (env: Record<string, string>) => Promise<number>][] = [
        ["host", (env) => cli(home, "host", env)],
        ["bridge", (env) => cli(home, "bridge", env)],
      ];
      if (BASELINE) {
        traced.push(["baseline host", (env) => cli(baseHome, "host", env)]);
        traced.push(["baseline bridge", (env) => cli(baseHome, "bridge", env)]);
      }
      await traceCli(tmp, TRACE_RUNS, out, traced);
    }
    if (CLI_ONLY) return;
    // -- throughput: plain loopback baseline, host -> container, container -> VM
    const sendFromHost = async (host: string, port: number) => {
      const deadline = Date.now() + 30_000;
      for (;;) {
        try {
          return await new Promise<number>((resolve, reject) => {
            const sock = net.connect(port, host);
            const chunk = Buffer.alloc(1 << 20);
            let left = BYTES;
            let t0 = 0;
            sock.once("connect", () => {
              t0 = now();
              const pump = () => {
                while (left > 0) {
                  left -= chunk.length;
                  if (!sock.write(chunk)) return void sock.once("drain", pump);
                }
                sock.end();
              };
              pump();
            });
            sock.once("error", reject);
            sock.once("close", (hadError) => (hadError ? reject(new Error("closed")) : resolve(now() - t0)));
          });
        } catch (err) {
          if (Date.now() > deadline) throw err;
          await sleep(100);
        }
      }
    };
    const mbps = (ms: number) => BYTES / 2 ** 20 / (ms / 1000);
    // the receiver reads the socket to its end: `nc -l -e SINK` (nc itself would stop at its own stdin's EOF)
    const sink = path.join(tmp, "sink");
    await writeFile(sink, "#!/bin/sh\nexec cat >/dev/null\n", { mode: 0o755 });
    const loopPort = 41000 + (process.pid % 1000);
    const loopServer = spawn("busybox", ["nc", "-l", "-p", String(loopPort), "-e", sink], {
      stdio: ["ignore", "ignore", "ignore"],
    });
    const loop = await sendFromHost("127.0.0.1", loopPort);
    loopServer.kill();
    row(
      `TCP ${BYTES / 2 ** 30} GiB, plain loopback on the host (busybox nc)`,
      `${mbps(loop).toFixed(0)} MiB/s (1.00x)`,
    );
    const SINK = "printf '#!/bin/sh\\nexec cat >/dev/null\\n' >/tmp/sink; chmod +x /tmp/sink;";
    const server = await run({}, ["sh", "-c", `${SINK} nc -l -p 5000 -e /tmp/sink`]);
    const toContainer = await sendFromHost(server.owner!.network!.ip!, 5000);
    await server.done;
    row(
      "  host -> runc container over the bridge",
      `${mbps(toContainer).toFixed(0)} MiB/s (${(loop / toContainer).toFixed(2)}x)`,
    );
    if (VM) {
      const vmOpts = await parseRunOptions(
        image,
        ["sh", "-c", `${SINK} nc -l -p 5000 -e /tmp/sink; nc -l -p 5001 -e /tmp/sink`],
        {
          runtime: "qemu",
        },
      );
      const vm = runContainer({
        home,
        options: vmOpts,
        image: await resolveImage(home, image),
        runtime: await runtimeFor(vmOpts),
        stdio: { stdout: "pipe", stderr: "pipe" },
        notify: () => {},
      });
      const vs = await vm.started;
      const vmDone = Promise.all([readAll(vs.stdout), readAll(vs.stderr), vm.result]);
      const vmIp = (await readOwner(path.join(home.runs, vs.id)))!.network!.ip!;
      // the container measures its own transfer (uptime, 10 ms resolution), once the VM listens
      const client = await run({}, [
        "sh",
        "-c",
        `until echo x | nc ${vmIp} 5000; do sleep 0.2; done; sleep 0.5; ` +
          `a=$(cut -d' ' -f1 /proc/uptime); head -c ${BYTES} /dev/zero | nc ${vmIp} 5001; ` +
          `b=$(cut -d' ' -f1 /proc/uptime); echo "$a $b"`,
      ]);
      const [[stdout]] = await Promise.all([client.done, vmDone]);
      const [a, b] = stdout.trim().split(" ").map(Number);
      const toVm = (b! - a!) * 1000;
      row(
        "  runc container -> QEMU VM (TCG) over the bridge",
        `${mbps(toVm).toFixed(0)} MiB/s (${(loop / toVm).toFixed(3)}x)`,
      );
    }
  } finally {
    for (const h of ["home", "nopool", "baseline"].map((d) => new KindlingHome(path.join(tmp, d)))) {
      await stopServiceAndContainers(h.root).catch(() => {}); // the CLI rows' auto-started services
      await removeHomeNetwork(h).catch(() => {});
    }
    await rm(tmp, { recursive: true, force: true }).catch(() => {});
    const load = (await readFile("/proc/loadavg", "utf8")).split(" ").slice(0, 3).join(" ");
    console.log(`network benchmark, medians of ${N} interleaved rounds (warm: bridge made, plugins cached)`);
    console.log(`  command: node dist/bench/network.js ${process.argv.slice(2).join(" ")}`.trimEnd());
    console.log(`  load average at the end: ${load}`);
    for (const l of out) console.log(l);
  }
}

/**
 * Waits (bounded) until a home is settled after a CLI run: no handed-off teardown still running (every
 * record of the home is a ready pool entry) and its pool holds `poolSize` ready namespaces.
 */
async function settledHome(h: KindlingHome, poolSize: number): Promise<void> {
  const { netnsPrefix, tag } = homeNetworkNames(h);
  const busy = async () => {
    const marks = (await readdir(poolDir(tag)).catch(() => [] as string[])).filter((m) => !m.startsWith("."));
    const records = (await readdir(path.join(OWNERS_DIR, "runs")).catch(() => [] as string[])).filter(
      (f) => f.startsWith(netnsPrefix) && f.endsWith(".json"),
    );
    return records.some((f) => !marks.includes(f.slice(0, -5))) || marks.length < poolSize;
  };
  for (let i = 0; i < 3000 && (await busy()); i++) await sleep(5);
}

/**
 * `--trace M`: M more `kindling run`s per variant (host and pooled bridge, of this build and, with
 * --baseline, of the baseline's; interleaved), each with its own KINDLING_TRACE file
 * (src/util/trace.ts): per step, when it happened (median ms since the first step) and how long after
 * the step before it (median), so where the bridge's time goes shows beside host's.
 */
async function traceCli(
  tmp: string,
  runs: number,
  out: string[],
  variants: [string, (env: Record<string, string>) => Promise<number>][],
): Promise<void> {
  // per variant and step: when it happened (ms since the first step) and how long after the step before it
  const at = new Map(variants.map(([v]) => [v, new Map<string, number[]>()]));
  const gap = new Map(variants.map(([v]) => [v, new Map<string, number[]>()]));
  const order: string[] = [];
  const push = (m: Map<string, number[]>, k: string, v: number) => m.set(k, [...(m.get(k) ?? []), v]);
  for (let i = 0; i < runs; i++) {
    for (const [variant, run] of variants) {
      const file = path.join(tmp, `trace-${variant.replace(/\W/g, "_")}-${i}.txt`);
      await run({ KINDLING_TRACE: file });
      const lines = (await readFile(file, "utf8"))
        .trim()
        .split("\n")
        .map((l) => {
          const [t, who, ...step] = l.split(" ");
          const name = `${who!.replace(/:\d+$/, "")}: ${step.join(" ").replace(/^\S+: /, "")}`
            .replace(/kl-[0-9a-f]{8}-\S+/g, "NETNS")
            .replace(/ \(sha256:[0-9a-f]+\)/g, "")
            .replace(/\/dev\/loop\d+ \(.*?\)/g, "LOOP")
            .replace(/image file \S+/g, "image file IMAGE")
            .replace(/\/\S*\/run\/[0-9a-f]{12}/g, "RUNDIR")
            .replace(/[0-9a-f]{12}/g, "ID");
          return { t: Number(t), name };
        })
        .sort((a, b) => a.t - b.t);
      const t0 = lines[0]!.t;
      const seen = new Set<string>();
      lines.forEach(({ t, name }, j) => {
        let key = name;
        for (let k = 2; seen.has(key); k++) key = `${name} #${k}`;
        seen.add(key);
        if (!order.includes(key)) order.push(key);
        push(at.get(variant)!, key, t - t0);
        push(gap.get(variant)!, key, j === 0 ? 0 : t - lines[j - 1]!.t);
      });
    }
  }
  const med = (m: Map<string, number[]>, key: string) => {
    const v = m.get(key);
    return v && v.length > 0 ? median(v) : undefined;
  };
  const when = (key: string) => variants.map(([v]) => med(at.get(v)!, key)).find((x) => x !== undefined) ?? 0;
  order.sort((a, b) => when(a) - when(b));
  out.push(
    `\nwhere a traced \`kindling run\` spends its time (KINDLING_TRACE, ${runs} runs per variant, interleaved; medians: "at" = ms since the first step, "+" = ms since the step before it in that run, in any process):`,
    `| step | ${variants.map(([v]) => `${v}: at | +`).join(" | ")} |`,
    `|---|${variants.map(() => "---:|---:").join("|")}|`,
  );
  const f = (x?: number) => (x === undefined ? "" : x.toFixed(1));
  for (const key of order) {
    const cells = variants.map(([v]) => `${f(med(at.get(v)!, key))} | ${f(med(gap.get(v)!, key))}`);
    out.push(`| ${key} | ${cells.join(" | ")} |`);
  }
}

await main();
