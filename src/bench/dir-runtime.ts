/**
 * The baseline for "runc on a warm lazy image within 1.5x of runc on a plain directory": runc on
 * the image's tree unpacked into a plain directory (no lazy file, loop, squashfs or overlay). The
 * same process spec, bundle and runc flags as the runc runtime; only the rootfs differs.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import type { Readable } from "node:stream";
import { buildOciSpec } from "../runtime/oci.js";
import { buildProcessSpec } from "../runtime/process.js";
import { exitStatusOf } from "../runtime/status.js";
import type { Container, ExitStatus, PrepareRequest, Runtime } from "../runtime/types.js";
import { readUserDb } from "../runtime/users.js";
import { findBinary } from "../runtime/which.js";
import { KindlingError } from "../util/errors.js";
import { exec } from "../util/exec.js";
import type { Scope } from "../util/scope.js";

export class DirRuntime implements Runtime {
  readonly name = "runc" as const;
  private binary?: string;

  /** `tree`: the image's files, unpacked once by the bench and shared by every run. */
  constructor(private readonly tree: string) {}

  async checkHost(): Promise<void> {
    this.binary = await findBinary("runc");
    if (!this.binary) throw new KindlingError("runc is not installed");
  }

  async prepare(req: PrepareRequest, scope: Scope): Promise<Container> {
    if (!this.binary) await this.checkHost();
    const bundle = req.runDir.file("bundle");
    await mkdir(bundle, { recursive: true });
    const proc = buildProcessSpec(req.image.config, req.options, await readUserDb(this.tree), req.id);
    const spec = buildOciSpec({
      process: proc,
      hostname: req.id,
      rootfs: this.tree,
      volumes: req.options.volumes,
      nofile: 1024,
    });
    await writeFile(`${bundle}/config.json`, JSON.stringify(spec));
    const container = new DirContainer(this.binary!, req.id, bundle, req.runDir.file("state"));
    scope.defer(`runc container ${req.id}`, () => container.delete());
    return container;
  }
}

class DirContainer implements Container {
  private child?: ChildProcess;
  private exited?: Promise<ExitStatus>;

  constructor(
    private readonly binary: string,
    readonly id: string,
    private readonly bundle: string,
    private readonly root: string,
  ) {}

  async start(): Promise<{ stdout: Readable | null; stderr: Readable | null }> {
    const child = spawn(this.binary, ["--root", this.root, "run", "--bundle", this.bundle, this.id], {
      cwd: this.bundle,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    this.exited = new Promise((resolve, reject) => {
      child.on("error", reject);
      child.on("close", (code, signal) => resolve(exitStatusOf(code, signal)));
    });
    this.exited.catch(() => {});
    return { stdout: child.stdout, stderr: child.stderr };
  }

  wait(): Promise<ExitStatus> {
    return this.exited ?? Promise.reject(new Error("container not started"));
  }

  async kill(signal: "TERM" | "KILL" | "INT" | "HUP"): Promise<void> {
    if (this.child?.exitCode !== null) return;
    await exec(this.binary, ["--root", this.root, "kill", this.id, signal], { allowFailure: true });
  }

  async delete(): Promise<void> {
    await exec(this.binary, ["--root", this.root, "delete", "--force", this.id], { allowFailure: true });
  }
}
