/**
 * Fixtures for the Firecracker tests: VmSpecs over small placeholder files, and the test double
 * (fake-firecracker.js) wrapped as an executable so the backend spawns it like the real binary.
 * Imported by tests only; running it as a file does nothing.
 */
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { VmSpec } from "../../src/vm/spec.js";
import { doubleSchemaFile } from "./fc-api-rules.js";

const here = path.dirname(fileURLToPath(import.meta.url));

export interface Fixture {
  dir: string;
  /** An executable that runs the test double with the given arguments. */
  fakeBin: string;
  /** Where the fake's "guest" endpoints live ($FAKE_FC_GUEST_DIR). */
  guestDir: string;
  kernel: string;
  initrd: string;
  drive(name: string): Promise<string>;
  spec(overrides?: Partial<VmSpec>): VmSpec;
  cleanup(): Promise<void>;
}

export async function makeFixture(): Promise<Fixture> {
  // Fail here, naming the file, rather than in every test through the double's exit.
  doubleSchemaFile(path.resolve(here, "..", "..", ".."));
  // Short paths: Unix socket paths must fit in 107 bytes.
  const dir = await mkdtemp(path.join(os.tmpdir(), "kfc-"));
  const guestDir = path.join(dir, "g");
  await mkdir(guestDir);
  const fakeBin = path.join(dir, "firecracker");
  await writeFile(
    fakeBin,
    `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(path.join(here, "fake-firecracker.js"))} "$@"\n`,
  );
  await chmod(fakeBin, 0o755);
  const kernel = path.join(dir, "vmlinux");
  const initrd = path.join(dir, "initrd.cpio");
  await writeFile(kernel, "not really a kernel");
  await writeFile(initrd, "not really an initrd");
  let n = 0;
  return {
    dir,
    fakeBin,
    guestDir,
    kernel,
    initrd,
    async drive(name) {
      const p = path.join(dir, `${name}.img`);
      await writeFile(p, Buffer.alloc(4096));
      return p;
    },
    spec(overrides = {}) {
      return {
        kernelPath: kernel,
        initrdPath: initrd,
        cmdline: "console=ttyS0 kindling.root=/dev/vda",
        memoryMiB: 256,
        vcpus: 2,
        drives: [],
        shares: [],
        stateDir: path.join(dir, `vm${n++}`),
        ...overrides,
      };
    },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

/** True while a process with this pid exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
