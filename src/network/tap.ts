/**
 * A microVM's NIC, firecracker-containerd's way: the run's namespace got its veth (eth0) from CNI as a
 * container's would; a TAP device beside it is wired to it with tc (ingress of each redirected to the
 * other), and the VMM runs in that namespace. The guest uses eth0's MAC and CNI's address, so the
 * bridge, IPAM, portmap and firewall see exactly what they set up; the namespace's own stack never sees
 * a frame (ingress redirect comes first). Deleting the namespace removes the TAP and the filters.
 * eth0 keeps its address: the bridge plugin's DEL reads it there to remove the masquerade rules.
 */
import { KindlingError } from "../util/errors.js";
import { exec } from "../util/exec.js";

export const TAP_NAME = "tap0";

export interface VmNic {
  /** The TAP in the namespace, for the VMM (`-netdev tap,ifname=`, Firecracker's host_dev_name). */
  tap: string;
  /** The guest's MAC: the veth's, as CNI reported it. */
  mac: string;
  mtu: number;
}

/** Makes the TAP in `netnsName` and redirects between it and `ifName`; returns the NIC for the VMM. */
export async function wireTap(netnsName: string, ifName: string): Promise<VmNic> {
  const link = await exec("ip", ["-n", netnsName, "-o", "link", "show", "dev", ifName]);
  const mtu = Number(/ mtu (\d+)/.exec(link.stdout)?.[1]);
  const mac = /link\/ether ([0-9a-f:]{17})/.exec(link.stdout)?.[1];
  if (!mac || !mtu) throw new KindlingError(`network namespace ${netnsName}: ${ifName} has no MAC or MTU`);
  await exec("ip", ["-n", netnsName, "-batch", "-"], {
    input: `tuntap add dev ${TAP_NAME} mode tap\nlink set dev ${TAP_NAME} mtu ${mtu} up\n`,
  });
  // u32 "match u8 0 0" matches every frame (matchall is not in every kernel)
  const redirect = (from: string, to: string) =>
    `qdisc add dev ${from} ingress\n` +
    `filter add dev ${from} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev ${to}\n`;
  await exec("tc", ["-n", netnsName, "-batch", "-"], {
    input: redirect(ifName, TAP_NAME) + redirect(TAP_NAME, ifName),
  });
  return { tap: TAP_NAME, mac, mtu };
}
