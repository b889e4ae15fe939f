/**
 * A run's network: `bridge` = a namespace made by Kindling, `lo` up and the CNI network attached as
 * eth0; `none` = a namespace with `lo` only; `host` = nothing (the host's). Every step is recorded with
 * the run before it is taken, so the scope (or, after a crash, the next run) undoes it.
 */
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { Scope } from "../util/scope.js";
import { trace } from "../util/trace.js";
import {
  addNetworkList,
  type CniAttachment,
  type CniConfList,
  type CniResult,
  execPlugin,
  pluginConfig,
  skippable,
} from "./cni.js";
import { homeNetworkNames, loadNetwork, type NetworkSettings } from "./conflist.js";
import { createNetns } from "./netns.js";
import { RunRecorder, recordHome } from "./owners.js";
import { takePooledNetwork } from "./pool.js";
import { type NetworkResource, releaseNetworkResource } from "./resources.js";
import { sweepNetwork } from "./sweep.js";
import { handingOff, inBackground, startReleaseProcess } from "./teardown.js";
import type { NetworkInfo, NetworkMode, PortMapping } from "./types.js";

export const CONTAINER_IFNAME = "eth0";

/** How a run holds resources (RunDir.hold / RunDir.update), without the network module knowing RunDir. */
export interface ResourceHolder {
  hold(scope: Scope, resource: NetworkResource): Promise<void>;
  update(resource: NetworkResource, change: Partial<NetworkResource>): Promise<void>;
}

export interface NetworkRequest {
  home: KindlingHome;
  runId: string;
  mode: NetworkMode;
  ports: PortMapping[];
  settings: NetworkSettings;
  holder: ResourceHolder;
  scope: Scope;
  /** Take a ready namespace of the home's pool (pool.ts) when there is one; default true. */
  pool?: boolean;
}

/** What a run got: where its namespace is (not for `host`), and what to record and show. */
export interface RunNetwork {
  info: NetworkInfo;
  netnsName?: string;
  netnsPath?: string;
  /** The CNI result of the attachment (bridge mode). */
  result?: CniResult;
  /**
   * `-p`: the port mappings' plugin (portmap) is ADDed beside the container's start (its iptables
   * processes are most of a `-p` run's network time); resolves once the ports are published. The
   * runtime awaits it before the run counts as started (as `docker run -d -p` returns once the port is
   * published) and fails the run if it rejects. Already handled: awaiting it late raises no warning.
   */
  published?: Promise<void>;
}

/** CNI's portMappings: an unspecified host address is left out (portmap then binds every address). */
function portMappingsArg(ports: PortMapping[]): unknown[] {
  return ports.map((p) => ({
    hostPort: p.hostPort,
    containerPort: p.containerPort,
    protocol: p.protocol,
    ...(p.hostIP === "0.0.0.0" ? {} : { hostIP: p.hostIP }),
  }));
}

export async function setUpNetwork(req: NetworkRequest): Promise<RunNetwork> {
  const { mode, ports } = req;
  if (mode === "host") {
    if (ports.length > 0)
      throw new KindlingError("-p does not apply to --network host (the container uses the host's ports)");
    return { info: { mode, ports: [] } };
  }
  if (mode === "none" && ports.length > 0) throw new KindlingError("-p does not apply to --network none");
  // (the home is recorded first: a sweep never takes a live home's tag for a dead one)
  await recordHome(req.home.root);
  // A ready namespace of the home's service (pool.ts): its refill sweeps, off this run's path.
  const pooled = await fromPool(req);
  trace(pooled ? "network: pooled namespace taken" : "network: no pooled namespace");
  if (pooled) return pooled;
  // What dead runs of vanished homes left: the quick part reads a few files; it spawns only for what
  // it finds dead (and for the iptables part every FULL_SWEEP_EVERY_MS). Settled before returning.
  const sweeping = sweepNetwork({ rateLimited: true }).catch(() => undefined);
  try {
    return await attach(req);
  } finally {
    await sweeping;
  }
}

/** How a run records what it holds: owner.json (req.holder) and the host record (owners.ts). */
interface Recording {
  recorder: RunRecorder;
  holder: ResourceHolder;
  /** Where held resources are released: the run's scope, or (hand-off) one that is never closed. */
  releasingScope: Scope;
}

function recording(req: NetworkRequest, netnsName: string): Recording {
  // every resource is recorded on the host too (owners.ts), for the sweep if the home goes away
  const recorder = new RunRecorder(req.home.root, req.runId, netnsName);
  // A background teardown (teardown.ts): owner.json still records each resource (a crash before the
  // hand-off is cleaned from it), but the run's scope releases them with one step that hands them over.
  const handOff = inBackground();
  // (not awaited by the scope: the run's other releases go on meanwhile; handOffsDone() waits for it)
  if (handOff) req.scope.defer(`network of ${netnsName}`, () => void handingOff(handOver(recorder)));
  const releasingScope = handOff ? new Scope() : req.scope; // never closed: the hand-off releases
  const holder: ResourceHolder = {
    async hold(_scope, r) {
      await recorder.add(r);
      await req.holder.hold(releasingScope, r);
    },
    async update(r, change) {
      await req.holder.update(r, change);
      await recorder.save();
    },
  };
  return { recorder, holder, releasingScope };
}

async function attach(req: NetworkRequest): Promise<RunNetwork> {
  const { mode, ports } = req;
  // bridge: read (or make) the network first: a bad user config fails before anything exists
  const list = mode === "bridge" ? await loadNetwork(req.home, req.settings) : undefined;
  const netnsName = `${homeNetworkNames(req.home).netnsPrefix}${req.runId}`;
  const { holder } = recording(req, netnsName);
  const netnsResource: NetworkResource = { kind: "netns", name: netnsName };
  await holder.hold(req.scope, netnsResource);
  const netns = await createNetns(netnsName); // with lo up
  const dirs = req.settings.pluginDirs;
  if (!list) return { info: { mode, netns, ports: [] }, netnsName, netnsPath: netns };
  const attachment: CniAttachment = {
    containerId: req.runId,
    netns,
    ifName: CONTAINER_IFNAME,
    capabilityArgs: { portMappings: portMappingsArg(ports) },
  };
  const cni: NetworkResource & { kind: "cni" } = { kind: "cni", list, attachment, pluginDirs: dirs };
  await holder.hold(req.scope, cni);
  // -p: the plugins that only publish ports (portmap) run after the rest, beside the container's start,
  // when they are the list's last (else in the list's order, as the spec has it, and awaited here)
  const later = ports.length > 0 && publishersLast(list, attachment);
  const result = await addNetworkList(list, later ? withoutPorts(attachment) : attachment, dirs);
  await holder.update(cni, { result });
  const published = later ? publishBeside(req, cni, holder, withoutPorts(attachment)) : undefined;
  return { info: infoOf(result, list.name, netns, ports), netnsName, netnsPath: netns, result, published };
}

/** The attachment with no port mappings: what the pool's entries were ADDed with. */
function withoutPorts(at: CniAttachment): CniAttachment {
  return { ...at, capabilityArgs: { ...at.capabilityArgs, portMappings: [] } };
}

/** Whether the plugins that port mappings add (portmap) all come after the others in the list. */
function publishersLast(list: CniConfList, at: CniAttachment): boolean {
  const bare = withoutPorts(at);
  const adds = list.plugins.map((p) => skippable(p, bare) && !skippable(p, at));
  return adds.indexOf(true) >= 0 && adds.slice(adds.indexOf(true)).every(Boolean);
}

/**
 * A bridged run on the home's default network (never a user's CNI config) takes a ready namespace of
 * the pool when there is one: held in its owner.json first (a crash from here on is its home's
 * cleanup), then its host record names this run and process (one write), then the claim is let go.
 * An entry made on another conflist than the run's (the home's default was upgraded) is released.
 */
async function fromPool(req: NetworkRequest): Promise<RunNetwork | undefined> {
  if (req.mode !== "bridge" || req.pool === false || req.settings.cniConfDir !== undefined) return undefined;
  const [list, pooled] = await Promise.all([
    loadNetwork(req.home, req.settings).finally(() => trace("network: default network read")),
    takePooledNetwork(req.home).finally(() => trace("network: pool entry claimed")),
  ]);
  if (!pooled) return undefined;
  if (JSON.stringify(pooled.cni.list) !== JSON.stringify(list)) {
    await pooled.release();
    return undefined;
  }
  const { recorder, releasingScope, holder } = recording(req, pooled.netnsName);
  try {
    // at the same time (one write of owner.json, one of the host record): a crash in between leaves
    // either one, and either is released (the home's cleanup, or the sweep once the run dir is gone)
    await Promise.all([
      req.holder.hold(releasingScope, pooled.netns),
      req.holder.hold(releasingScope, pooled.cni),
      recorder.add(pooled.netns, pooled.cni),
    ]);
  } finally {
    await pooled.taken();
  }
  let published: Promise<void> | undefined;
  if (req.ports.length > 0) {
    const before = pooled.cni.attachment;
    // the mappings are recorded first: every later DEL (scope, crash cleanup, sweep) runs portmap's too
    await holder.update(pooled.cni, {
      attachment: { ...before, capabilityArgs: { portMappings: portMappingsArg(req.ports) } },
    });
    published = publishBeside(req, pooled.cni, holder, before);
  }
  const { attachment, result } = pooled.cni;
  return {
    info: infoOf(result!, list.name, attachment.netns, req.ports),
    netnsName: pooled.netnsName,
    netnsPath: attachment.netns,
    result,
    published,
  };
}

/**
 * `-p`: ADDs the plugins that `before` (the attachment as ADDed so far, without mappings) skipped and
 * the recorded attachment (with its mappings) runs (portmap), chained on the result as the list would
 * have run them, and records the result; started now, not awaited (RunNetwork.published). The run's
 * scope waits for it before the attachment's DEL or its hand-off (the spec: no two operations on one
 * attachment at once).
 */
function publishBeside(
  req: NetworkRequest,
  cni: NetworkResource & { kind: "cni" },
  holder: ResourceHolder,
  before: CniAttachment,
): Promise<void> {
  const at = cni.attachment;
  const publishing = (async () => {
    let result = cni.result;
    for (const plugin of cni.list.plugins) {
      if (!skippable(plugin, before) || skippable(plugin, at)) continue;
      const conf = pluginConfig(cni.list, plugin, at, result);
      result = (await execPlugin(conf, "ADD", at, cni.pluginDirs)) ?? result;
    }
    await holder.update(cni, { result });
    trace("network: ports published");
  })();
  publishing.catch(() => {}); // the runtime awaits it; a run that fails first must not leave it unhandled
  req.scope.defer(`port mappings of ${at.containerId}`, () => publishing.catch(() => {}));
  return publishing;
}

/** Hands the run's network to a release process (or, if none starts, releases it here). */
async function handOver(recorder: RunRecorder): Promise<void> {
  const pid = await startReleaseProcess(recorder.netnsName, recorder.resources, recorder.home).catch(
    () => undefined,
  );
  trace("network: release process started");
  if (pid !== undefined) return recorder.handOver(pid);
  for (const r of [...recorder.resources].reverse()) await releaseNetworkResource(r);
}

/** The container's address, MAC and gateway from a CNI result (the interface in the sandbox). */
export function infoOf(result: CniResult, name: string, netns: string, ports: PortMapping[]): NetworkInfo {
  const ifaces = result.interfaces ?? [];
  const ip =
    (result.ips ?? []).find((i) => i.interface !== undefined && ifaces[i.interface]?.sandbox !== undefined) ??
    result.ips?.[0];
  const iface =
    ip?.interface !== undefined ? ifaces[ip.interface] : ifaces.find((i) => i.sandbox !== undefined);
  const [address, prefix] = (ip?.address ?? "").split("/");
  return {
    mode: "bridge",
    name,
    ...(address ? { ip: address, prefixLength: Number(prefix) } : {}),
    ...(iface?.mac ? { mac: iface.mac } : {}),
    ...(ip?.gateway ? { gateway: ip.gateway } : {}),
    netns,
    ports,
  };
}
