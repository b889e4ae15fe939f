/**
 * A small pool of ready network namespaces on a home's default network, kept by the home's service so
 * that a bridged run's network setup is a record update instead of `unshare` + the bridge and
 * host-local ADD (bench/network.ts: "pooled setup").
 *
 * An entry is a namespace `kl-<tag>-pool<hex>` with lo up, the default network attached as eth0 and its
 * address leased, recorded as a run of its own under /run/kindling/network/runs/ (owners.ts) with the
 * service as owner, and marked ready by a file pool/<tag>/<netns>. A run takes one (takePooledNetwork:
 * the mark's unlink decides who gets it, then the run holds it in its owner.json and becomes the
 * owner of its record) and releases it as its own. The pool starts with the home's first bridged run
 * (its default network written): a home that never runs one gets nothing from its service. It is
 * refilled in the background once the run that took an entry is over (see REFILL_AT_MOST_MS), and what
 * is still ready is released when the service stops. A service that dies leaves records with a dead owner and no run directory: the sweep
 * (sweep.ts, run by the next service's start, every network setup and `doctor --fix`) releases them.
 *
 * Only the home's default network is pooled, never a user's CNI config (KINDLING_CNI_CONF_DIR): a run
 * takes an entry only when the entry's conflist is the one it would use.
 */
import { randomBytes } from "node:crypto";
import { type FSWatcher, watch } from "node:fs";
import { mkdir, readdir, stat, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { config } from "../config/index.js";
import { isSameProcess } from "../host/process.js";
import { errorMessage } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { addNetworkList } from "./cni.js";
import {
  DEFAULT_FILE,
  homeNetworkNames,
  loadNetwork,
  type NetworkSettings,
  networkSettings,
} from "./conflist.js";
import { createNetns, netnsPath } from "./netns.js";
import {
  claimRun,
  homeTag,
  poolDir,
  poolMarker,
  RunRecorder,
  readRunRecord,
  recordHome,
  runRecordFile,
} from "./owners.js";
import { type NetworkResource, releaseNetworkResource } from "./resources.js";
import { releaseRun, sweepNetwork } from "./sweep.js";

/**
 * When a taken entry is made again. Not at once: the run that took it is starting (or, for a short
 * run, ending), and a refill's processes (unshare, the bridge and host-local ADD) would compete with it
 * for the CPUs. So the refill waits until the taker's network is released (its record is gone: the run
 * is over, its teardown done), at most REFILL_AT_MOST_MS (a long-running container); with no entry left
 * ready (a burst of runs) only REFILL_EMPTY_MS.
 */
const REFILL_AT_MOST_MS = 2_000;
const REFILL_EMPTY_MS = 250;
/** A home with no default network yet fills its pool this long after its first bridged run made it. */
const FIRST_FILL_DELAY_MS = 1_000;
/** After a failed fill, the pool waits this long before it tries again. */
const RETRY_MS = 30_000;
export const POOL_IFNAME = "eth0";

type Log = (level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;

export interface NetworkPool {
  /** Releases what is still ready; resolves once done. No refill afterwards. */
  stop(): Promise<void>;
  /** Resolves once the pool is full (or stopped, or a fill failed): for benchmarks and tests. */
  filled(): Promise<void>;
}

/**
 * Starts the pool of `home` (size: the KINDLING_NETWORK_POOL setting; 0, or a user CNI config, is no
 * pool). The first fill starts at once, after a sweep of what a killed service of this home left.
 */
export function startNetworkPool(
  home: KindlingHome,
  opts: { size?: number; settings?: NetworkSettings; log?: Log } = {},
): NetworkPool {
  const size = opts.size ?? config().networkPool;
  const settings = opts.settings ?? networkSettings();
  if (size <= 0 || settings.cniConfDir !== undefined) return { stop: async () => {}, filled: async () => {} };
  return new Pool(home, size, settings, opts.log ?? (() => {}));
}

class Pool implements NetworkPool {
  /** Entries made by this pool whose ready mark was there when last looked at. */
  private readonly ready = new Set<string>();
  private stopped = false;
  private filling: Promise<void> = Promise.resolve();
  /** Entries of this pool taken by runs and not yet released (their host record is still there). */
  private readonly taken = new Set<string>();
  private timer?: NodeJS.Timeout;
  private dueAt = 0;
  private readonly watchers: FSWatcher[] = [];
  private failedAt = 0;
  private readonly dir: string;

  constructor(
    private readonly home: KindlingHome,
    private readonly size: number,
    private readonly settings: NetworkSettings,
    private readonly log: Log,
  ) {
    this.dir = poolDir(homeTag(home.root));
    this.filling = this.begin();
  }

  private async begin(): Promise<void> {
    // the home's run/ is what tells the sweep it is alive (owners.ts homeExists): a new home has none yet
    await mkdir(this.home.runs, { recursive: true });
    await recordHome(this.home.root).catch(() => {});
    // a killed service's entries (dead owner, no run directory) go first
    const swept = await sweepNetwork({}).catch(() => undefined);
    if (swept?.released.length) this.log("info", "network: released what dead runs left", { ...swept });
    else if (swept?.errors.length) this.log("warn", "network: sweep", { errors: swept.errors });
    await mkdir(this.dir, { recursive: true });
    // (no inotify: refilled only when fill() runs again, after the next failure's retry)
    this.watch(this.dir, () => void this.look());
    const runs = path.dirname(runRecordFile("x"));
    await mkdir(runs, { recursive: true });
    this.watch(runs, (file) => {
      const name = file?.endsWith(".json") ? file.slice(0, -5) : undefined;
      if (name && this.taken.has(name)) void this.released(name);
    });
    // Lazily: a home that never ran a bridged container gets no bridge, rules or namespaces from its
    // service. Its first bridged run writes the home's default network: the pool fills after it.
    const { dir } = homeNetworkNames(this.home);
    if (await present(path.join(dir, DEFAULT_FILE))) return this.fill();
    await mkdir(dir, { recursive: true });
    this.watch(dir, (file) => {
      if (file === DEFAULT_FILE) this.schedule(FIRST_FILL_DELAY_MS);
    });
    // (written between the check and the watch)
    if (await present(path.join(dir, DEFAULT_FILE))) this.schedule(FIRST_FILL_DELAY_MS);
  }

  private watch(dir: string, onEvent: (file: string | undefined) => void): void {
    try {
      const w = watch(dir, (_event, file) => onEvent(file ?? undefined));
      w.on("error", () => {});
      w.unref();
      this.watchers.push(w);
    } catch {
      // no inotify
    }
  }

  /** A mark went (or came): entries taken since the last look wait for their release (or a timeout). */
  private async look(): Promise<void> {
    let took = false;
    for (const name of [...this.ready]) {
      if (await present(poolMarker(name))) continue;
      this.ready.delete(name); // taken: its run owns it now
      this.taken.add(name);
      took = true;
    }
    if (took) this.schedule(this.ready.size === 0 ? REFILL_EMPTY_MS : REFILL_AT_MOST_MS);
  }

  /** A taken entry's record changed: once it is gone (its network released), refill now. */
  private async released(name: string): Promise<void> {
    if (await present(runRecordFile(name))) return;
    this.taken.delete(name);
    this.schedule(0);
  }

  /** Fills in `ms` (or sooner, if already due sooner). */
  private schedule(ms: number): void {
    if (this.stopped) return;
    const due = Date.now() + ms;
    if (this.timer && this.dueAt <= due) return;
    clearTimeout(this.timer);
    this.dueAt = due;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.filling = this.filling.then(() => this.fill());
    }, ms);
    this.timer.unref();
  }

  /** Makes entries, one at a time, until `size` are ready. */
  private async fill(): Promise<void> {
    for (const name of [...this.ready]) {
      if (!(await present(poolMarker(name)))) this.ready.delete(name); // taken: its run owns it now
    }
    this.taken.clear(); // refilled now: their release no longer matters
    // what dead runs of vanished homes left: a run that takes a namespace from here does not sweep
    if (this.ready.size < this.size) await sweepNetwork({ rateLimited: true }).catch(() => undefined);
    while (!this.stopped && this.ready.size < this.size) {
      if (Date.now() - this.failedAt < RETRY_MS) return this.schedule(RETRY_MS);
      try {
        this.ready.add(await this.make());
      } catch (err) {
        this.failedAt = Date.now();
        this.log("warn", "network pool: could not make a namespace", { error: errorMessage(err) });
      }
    }
  }

  /** One entry: recorded before each step (a crash is swept), marked ready last. */
  private async make(): Promise<string> {
    const list = await loadNetwork(this.home, this.settings);
    const id = `pool${randomBytes(4).toString("hex")}`;
    const name = `${homeNetworkNames(this.home).netnsPrefix}${id}`;
    const recorder = new RunRecorder(this.home.root, id, name);
    try {
      await recorder.add({ kind: "netns", name });
      // at nice 10: a refill runs beside the run that took a namespace, and yields to it
      const netns = await createNetns(name, { background: true });
      const cni: NetworkResource = {
        kind: "cni",
        list,
        attachment: { containerId: id, netns, ifName: POOL_IFNAME, capabilityArgs: { portMappings: [] } },
        pluginDirs: this.settings.pluginDirs,
      };
      await recorder.add(cni);
      cni.result = await addNetworkList(list, cni.attachment, cni.pluginDirs, { background: true });
      await recorder.save();
      await writeFile(poolMarker(name), "");
      if (this.stopped) throw new Error("the pool stopped");
      return name;
    } catch (err) {
      await unlink(poolMarker(name)).catch(() => {});
      await releaseAll(recorder.resources).catch(() => {});
      throw err;
    }
  }

  async filled(): Promise<void> {
    await this.filling;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    for (const w of this.watchers) w.close();
    await this.filling.catch(() => {});
    await Promise.all(
      [...this.ready].map(async (name) => {
        // its mark's unlink makes it ours again; a run that took it first owns it
        if (!(await unlink(poolMarker(name)).then(yes, no))) return;
        const rec = await readRunRecord(name);
        // as the sweep releases a run: a home deleted meanwhile (the service then stops) gets no lease dir again
        if (rec && rec.pid === process.pid) await releaseRun(name, rec, { released: [], errors: [] });
      }),
    );
    this.ready.clear();
  }
}

/** What a run took from the pool: its resources (namespace, attachment with its result), as recorded. */
export interface PooledNetwork {
  netnsName: string;
  netns: NetworkResource & { kind: "netns" };
  cni: NetworkResource & { kind: "cni" };
  /** Called once the run's records name the entry (it is the owner now). */
  taken(): Promise<void>;
  /** Releases it instead (not the network the run wants). */
  release(): Promise<void>;
}

/**
 * Takes a ready entry of `home`'s pool, if there is one. The caller records the resources as its own
 * (owner.json, then the host record) and then calls `taken()`; meanwhile the sweep's claim on the
 * record (owners.ts claimRun) keeps a sweeper from releasing it under the run if the service dies in
 * between. An entry of a dead service is left to the sweep.
 */
export async function takePooledNetwork(home: KindlingHome): Promise<PooledNetwork | undefined> {
  const dir = poolDir(homeTag(home.root));
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!(await unlink(path.join(dir, name)).then(yes, no))) continue; // another run took it
    const unclaim = await claimRun(name);
    if (!unclaim) continue;
    const rec = await readRunRecord(name);
    const [netns, cni] = rec?.resources ?? [];
    const usable =
      rec !== undefined &&
      rec.home === home.root &&
      isSameProcess(rec.pid, rec.startTime) &&
      netns?.kind === "netns" &&
      netns.name === name &&
      cni?.kind === "cni" &&
      cni.result !== undefined &&
      cni.attachment.netns === netnsPath(name);
    if (!usable) {
      await unclaim();
      continue;
    }
    const release = async () => {
      await releaseAll(rec.resources).catch(() => {});
      await unclaim();
    };
    return { netnsName: name, netns, cni, taken: unclaim, release };
  }
  return undefined;
}

async function releaseAll(resources: readonly NetworkResource[]): Promise<void> {
  for (const r of [...resources].reverse()) await releaseNetworkResource(r);
}

async function present(file: string): Promise<boolean> {
  return stat(file).then(yes, no);
}
const yes = () => true;
const no = () => false;
