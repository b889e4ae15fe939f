/**
 * What `kindling bench` runs: the note's testing plan (image sizes x bind mounts x runtimes and
 * rootfs strategies x cold/warm), narrowed by --quick and --filter, minus what this host lacks.
 */
import { getRuntime } from "../runtime/runtimes.js";
import type { RootfsStrategy, Runtime, RuntimeName } from "../runtime/types.js";
import { findBinary } from "../runtime/which.js";
import { errorMessage } from "../util/errors.js";
import { variantKey } from "./rows.js";

/** A runtime and rootfs; "dir" is the bench's baseline: runc on the image unpacked to a directory. */
export interface Strategy {
  runtime: RuntimeName;
  rootfs: RootfsStrategy | "dir";
}

export type Cache = "cold" | "warm";

/**
 * One unit of work, repeated --reps times: a fresh home pulls the image (index only), runs it cold
 * (chunks come from the registry) and then warm (a second run, chunks in the local cache).
 */
export interface Unit {
  strategy: Strategy;
  image: string;
  bindMounts: number;
  /** The runs of the unit that are recorded (a warm-only unit still runs cold first, unrecorded). */
  record: Cache[];
}

const VM_RUNTIMES: RuntimeName[] = ["qemu", "firecracker"];
const VM_ROOTFS: RootfsStrategy[] = ["copy", "squashfs", "lazy", "virtiofs"];

export const STRATEGIES: Strategy[] = [
  { runtime: "runc", rootfs: "dir" },
  { runtime: "runc", rootfs: "lazy" },
  { runtime: "runsc", rootfs: "lazy" },
  ...VM_RUNTIMES.flatMap((runtime) => VM_ROOTFS.map((rootfs) => ({ runtime, rootfs }))),
];

export const FULL_IMAGES = ["busybox", "small", "large"];
export const FULL_BINDS = [0, 10, 100];
export const QUICK_IMAGES = ["small"];
export const QUICK_BINDS = [0];

export interface PlanOptions {
  quick: boolean;
  /** Regular expressions matched against "runtime:rootfs:image:bindMounts:cache"; any may match. */
  filters: RegExp[];
}

/** The units to run, in order (rotated per repetition by the runner). */
export function planUnits(opts: PlanOptions): Unit[] {
  const images = opts.quick ? QUICK_IMAGES : FULL_IMAGES;
  const binds = opts.quick ? QUICK_BINDS : FULL_BINDS;
  const units: Unit[] = [];
  for (const image of images) {
    for (const bindMounts of binds) {
      for (const strategy of STRATEGIES) {
        // A plain directory has no chunk cache: only "warm" means anything for it.
        const caches: Cache[] = strategy.rootfs === "dir" ? ["warm"] : ["cold", "warm"];
        const record = caches.filter((cache) => {
          const key = variantKey({ ...strategy, image, bindMounts, cache });
          return opts.filters.length === 0 || opts.filters.some((f) => f.test(key));
        });
        if (record.length > 0) units.push({ strategy, image, bindMounts, record });
      }
    }
  }
  return units;
}

export const strategyName = (s: Strategy) => `${s.runtime}/${s.rootfs}`;

/** Why `s` cannot run on this host, or undefined if it can (its Runtime's own checks). */
export async function unavailableReason(s: Strategy): Promise<string | undefined> {
  if (s.rootfs === "dir") return (await findBinary("runc")) ? undefined : "runc is not installed";
  let runtime: Runtime;
  try {
    runtime = getRuntime(s.runtime, s.rootfs);
  } catch (err) {
    return errorMessage(err);
  }
  try {
    await runtime.checkHost();
  } catch (err) {
    return errorMessage(err);
  }
  return undefined;
}
