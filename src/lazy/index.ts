/**
 * Lazy image files, the front door: each image's block image as a read-only file on a FUSE mount,
 * served by a daemon process (daemon.ts) that reads chunks through the chunk path (src/chunks).
 * The client (client.ts) starts and joins daemons; DaemonDir owns their directories; stale.ts and
 * mount.ts clean up after dead ones. See docs/lazy.md.
 */
import type { KindlingHome } from "../util/home.js";
import { cleanupStaleImageMounts } from "./mount.js";
import { cleanupStaleDaemons } from "./stale.js";

export {
  DAEMON_JS,
  type LazyImage,
  openLazyImage,
  startSharedInBackground,
  stopIdleShared,
  useRunningShared,
} from "./client.js";
export { mountImage, umountImage } from "./mount.js";
export { liveDaemonPids } from "./shared.js";
export { daemonStats, type ImageLazyStats, imageStats, removeImageStats } from "./stats.js";
export { lazyUnsupportedReason } from "./support.js";
export type { FetchPolicy, LazyOptions, LazyStats } from "./types.js";

/**
 * Releases what dead processes left in this home: image mounts (squashfs mount, loop device)
 * and lazy daemons' FUSE mounts (aborted and detached) and directories. Returns what it released.
 */
export async function cleanupStale(home: KindlingHome): Promise<string[]> {
  const released = await cleanupStaleImageMounts(home);
  released.push(...(await cleanupStaleDaemons(home)));
  return released;
}
