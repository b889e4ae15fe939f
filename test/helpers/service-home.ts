/**
 * A home for the service's tests (service-runc, service-client, service-vm, tty, tty-vm): a temp
 * KINDLING_HOME with an image, optionally a running `kindling daemon`, and one teardown that stops the
 * service and every container it left, then asserts nothing is left behind (mounts, loops, processes,
 * cgroups, run dirs).
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { cleanupStaleRuns } from "../../src/runtime/rundir.js";
import { KindlingHome } from "../../src/util/home.js";
import { buildBusyboxTree, makeSquashfs } from "./images.js";
import { leftovers } from "./leftovers.js";
import { startService, stopServiceAndContainers, type TestService } from "./service.js";
import { type VmTestHome, vmTestHome } from "./vm-image.js";

export interface ServiceTestHome {
  /** KINDLING_HOME. */
  root: string;
  /** The service's API socket under it. */
  socket: string;
  /** A busybox SquashFS to run (busybox homes), or "ml", the VM test image's name (VM homes). */
  image: string;
  /** The service started for the home, if asked for. */
  service?: TestService;
  /** Container ids the test made: their processes and cgroups are part of the leftover check. */
  ids: string[];
  /** The environment a CLI run of this home needs (no KINDLING_SOCKET inherited from the caller). */
  env(): Record<string, string>;
  /** The `after()`: stops the service and the containers, cleans up, fails if anything was left. */
  done(): Promise<void>;
}

interface Options {
  /** Start `kindling daemon` for the home (default true). */
  service?: boolean;
}

function homeOf(
  root: string,
  image: string,
  cleanup: () => Promise<void>,
  imageFile?: string,
): ServiceTestHome {
  const t: ServiceTestHome = {
    root,
    socket: path.join(root, "kindling.sock"),
    image,
    ids: [],
    env: () => ({ KINDLING_HOME: root, KINDLING_SOCKET: "" }),
    done: async () => {
      await t.service?.stop().catch(() => {});
      await stopServiceAndContainers(root);
      await cleanupStaleRuns(new KindlingHome(root)).catch(() => {});
      const left = await leftovers(root, imageFile, t.ids);
      await cleanup();
      assert.deepEqual(left, []);
    },
  };
  return t;
}

/** A temp home with a busybox SquashFS image (`image` is its path), under a temp dir named `prefix`. */
export async function busyboxServiceHome(prefix: string, opts: Options = {}): Promise<ServiceTestHome> {
  const tmp = await mkdtemp(path.join(tmpdir(), prefix));
  const root = path.join(tmp, "home");
  const tree = path.join(tmp, "tree");
  const image = path.join(tmp, "busybox.sqfs");
  await buildBusyboxTree(tree);
  await makeSquashfs(tree, image);
  const t = homeOf(root, image, () => rm(tmp, { recursive: true, force: true }), image);
  if (opts.service ?? true) t.service = await startService(root);
  return t;
}

/** The VM tests' home (test/helpers/vm-image.ts: the two-layer image "ml", the shared guest kernel). */
export async function vmServiceHome(opts: Options = {}): Promise<ServiceTestHome & { vm: VmTestHome }> {
  const vm = await vmTestHome();
  const t = Object.assign(
    homeOf(vm.home.root, "ml", () => vm.cleanup()),
    { vm },
  );
  if (opts.service ?? true) t.service = await startService(t.root);
  return t;
}
