/**
 * The host resources networking gives a run, as recorded in its owner.json (src/runtime/resources.ts
 * includes them): released by the run's scope, or by the next run's cleanup after a crash.
 */
import { type CniAttachment, type CniConfList, type CniResult, delNetworkList } from "./cni.js";
import { deleteNetns } from "./netns.js";
import { forgetRun } from "./owners.js";

export type NetworkResource =
  /** A named network namespace (/run/netns/<name>); deleting it also removes what lives in it (veth end, tap). */
  | { kind: "netns"; name: string }
  /**
   * A CNI attachment: DEL through `list` releases the IPAM lease, the veth and the iptables rules.
   * Recorded before ADD (a half-done ADD is undone by DEL too); `result` once ADD returned it.
   */
  | { kind: "cni"; list: CniConfList; attachment: CniAttachment; pluginDirs: string[]; result?: CniResult };

export function describeNetworkResource(r: NetworkResource): string {
  return r.kind === "netns"
    ? `network namespace ${r.name}`
    : `CNI network ${r.list.name} of ${r.attachment.containerId}`;
}

export async function releaseNetworkResource(r: NetworkResource): Promise<void> {
  if (r.kind === "netns") {
    // the namespace is the first thing a run makes and the last released: its host record goes with it
    await deleteNetns(r.name);
    return forgetRun(r.name);
  }
  return delNetworkList(r.list, r.attachment, r.pluginDirs, r.result);
}
