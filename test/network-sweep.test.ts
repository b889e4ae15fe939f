/**
 * Leaks of homes that vanished: a run killed with SIGKILL whose KINDLING_HOME was then deleted (what a
 * killed test leaves) holds a namespace, a veth, the home's bridge, iptables rules in nat and filter and
 * a lease; no home will ever clean them. The next network setup in another home (or `kindling doctor
 * --fix`) releases them. Real CNI plugins; every check is scoped to the dead home's names and address,
 * as other tests may change the host's tables meanwhile.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { homeNetworkNames, OWNERS_DIR, removeHomeNetwork, sweepNetwork } from "../src/network/index.js";
import { resolveImage } from "../src/runtime/image.js";
import { runContainer } from "../src/runtime/lifecycle.js";
import { parseRunOptions } from "../src/runtime/options.js";
import { cleanupStaleRuns } from "../src/runtime/rundir.js";
import { runtimeFor } from "../src/runtime/runtimes.js";
import { exec } from "../src/util/exec.js";
import { KindlingHome } from "../src/util/home.js";
import { buildBusyboxTree, makeSquashfs } from "./helpers/images.js";
import { networkLeftovers } from "./helpers/network.js";
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

/** The lines of `ip -o link`, `ip netns`, `iptables -S`, `iptables -t nat -S` naming one of `needles`. */
async function hostLines(needles: string[]): Promise<string[]> {
  const outs = await Promise.all([
    exec("ip", ["-o", "link"]),
    exec("ip", ["netns", "list"]),
    exec("iptables", ["-S"]),
    exec("iptables", ["-t", "nat", "-S"]),
  ]);
  return outs
    .flatMap((o) => o.stdout.split("\n"))
    .filter((l) => needles.some((n) => l.includes(n)))
    .sort();
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

  assert.deepEqual(await hostLines(needles), []);
  const records = await readdir(path.join(OWNERS_DIR, "runs")).catch(() => []);
  assert.deepEqual(
    records.filter((f) => held.some((h) => f.includes(h.netns))),
    [],
  );
  assert.deepEqual(
    (await readdir(path.join(OWNERS_DIR, "homes")).catch(() => [])).filter((f) => f.startsWith(tag)),
    [],
  );
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
    });
    assert.match(r.stdout, new RegExp(`released network of run ${h.id} `));
    assert.deepEqual(await hostLines(needles), []);
    assert.deepEqual(await leases(), []);
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
