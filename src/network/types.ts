/** Types at the network module's boundary: what `kindling run` asks for and what a run got. */

/** `--network`: a CNI network in a namespace of its own (default), loopback only, or the host's. */
export const NETWORK_MODES = ["bridge", "none", "host"] as const;
export type NetworkMode = (typeof NETWORK_MODES)[number];

/** One `-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`, in CNI's portMappings shape. */
export interface PortMapping {
  hostIP: string;
  hostPort: number;
  containerPort: number;
  protocol: "tcp" | "udp";
}

/** What a run was given on its network; recorded with the run (owner.json `network`) for `inspect`. */
export interface NetworkInfo {
  mode: NetworkMode;
  /** The CNI network's name (bridge mode). */
  name?: string;
  /** The container's IPv4 address, without prefix length. */
  ip?: string;
  prefixLength?: number;
  mac?: string;
  gateway?: string;
  /** The namespace the container (or the VMM) runs in: /run/netns/<name>. */
  netns?: string;
  ports: PortMapping[];
}
