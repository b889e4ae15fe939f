/** The bind mounts of a variant: N host directories made by the bench, each holding BIND_BYTES. */
import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import type { VolumeSpec } from "../runtime/types.js";

/** Per mount: one 1 MiB file of random bytes (incompressible, so a copy or SquashFS pays for all of it). */
export const BIND_BYTES = 1 << 20;

/** Makes (once per count) `count` directories under `parent` and returns them as read-write volumes. */
export async function makeBindMounts(parent: string, count: number): Promise<VolumeSpec[]> {
  const volumes: VolumeSpec[] = [];
  for (let i = 0; i < count; i++) {
    const name = `m${String(i).padStart(3, "0")}`;
    const source = path.join(parent, `binds-${count}`, name);
    await mkdir(source, { recursive: true });
    await writeFile(path.join(source, "data.bin"), randomBytes(BIND_BYTES));
    volumes.push({ source, destination: `/mnt/${name}`, readOnly: false });
  }
  return volumes;
}

export function describeBinds(count: number): string {
  return `${count} x ${BIND_BYTES >> 20} MiB = ${(count * BIND_BYTES) >> 20} MiB`;
}
