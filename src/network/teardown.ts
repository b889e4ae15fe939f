/**
 * Taking a run's network teardown (CNI DEL, the namespace's removal) off the path that reports its exit
 * status: an attached run's supervisor (src/service/shim.ts: `kindling run` without -d) sends the status
 * once the run is released, and hands the teardown to a process of its own (a shell script running the plugins' DEL), which becomes
 * the owner of the run's host record (owners.ts) before the supervisor exits: no sweep takes the record
 * from a live owner, and if that process dies the sweep releases what it left (its owner is dead and the
 * run's directory is gone). Off by default: in-process callers (tests, benchmarks) release inline, so
 * "after the run, nothing is left" holds there.
 */
import { spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import type { Writable } from "node:stream";
import { findPlugin, lowerPriority, pluginConfig, pluginPath, skippable } from "./cni.js";
import { runRecordFile } from "./owners.js";
import type { NetworkResource } from "./resources.js";
import { withIpamOutside } from "./sweep.js";

let background = false;
let afterExit = false;
/** The write ends of the release processes' stdin that wait for this process's exit (kept open till then). */
const held: Writable[] = [];

/**
 * Set by an attached run's supervisor (`atExit`: the release process starts its DEL once this process
 * has exited, so its plugins do not compete for the CPUs with the supervisor's last steps and the
 * client's exit). Without `atExit` (benchmarks, tests) it starts at once.
 */
export function teardownInBackground(on: boolean, opts: { atExit?: boolean } = {}): void {
  background = on;
  afterExit = on && opts.atExit === true;
}

export function inBackground(): boolean {
  return background;
}

const handOffs = new Set<Promise<void>>();

/** Tracks a hand-off under way (attach.ts: the run's scope does not wait for it). */
export function handingOff(p: Promise<void>): void {
  const tracked: Promise<void> = p.catch(() => {}).finally(() => handOffs.delete(tracked));
  handOffs.add(tracked);
}

/**
 * Resolves once every network this process handed off is owned by its release process (its record
 * names it): a supervisor awaits it before it exits, since until then the record names the supervisor.
 */
export async function handOffsDone(): Promise<void> {
  while (handOffs.size > 0) await Promise.all(handOffs);
}

/**
 * Lets the release processes handed off so far (`atExit`) start their DEL now, as this process's exit
 * would: a supervisor that goes on to its next container (src/service/spare.ts) calls it once done.
 */
export function startHandedOffReleases(): void {
  for (const stdin of held.splice(0)) stdin.end();
}

/**
 * Starts the process that releases `netnsName` (its pid, or undefined if it could not start): a shell
 * script, not node (whose start costs more than the teardown itself on a busy host): it waits until the
 * run's record names it, runs each plugin's DEL in reverse (the protocol's environment, the config with
 * prevResult from a file written here), deletes the namespace, and drops the record and its files only if
 * all went well; else the sweep finds the record (dead owner, no run directory) and releases it (sweep.ts).
 */
export async function startReleaseProcess(
  netnsName: string,
  resources: readonly NetworkResource[],
  home: string,
): Promise<number | undefined> {
  const record = runRecordFile(netnsName);
  // A home deleted meanwhile (a test's temp home): host-local's DEL would make its lease directory
  // again, so the DEL then reads a config whose IPAM dataDir is a scratch directory beside the record.
  const scratch = `${record}.ipam`;
  const q = (v: string) => `'${v.replaceAll("'", `'\\''`)}'`;
  const lines = [
    `rec=${q(record)}`,
    // its stdin is a pipe whose write end only the process that handed it over holds (atExit): EOF
    // once that process is gone, however it ended; at once otherwise (the write end is closed now)
    "read -r _ || :",
    `i=0; while [ $i -lt 200 ] && ! grep -q "\\"pid\\":$$," "$rec"; do sleep 0.01; i=$((i+1)); done`,
    "ok=0",
  ];
  const files: string[] = [];
  for (const r of [...resources].reverse()) {
    if (r.kind === "netns") {
      lines.push(`ip netns delete ${q(r.name)} 2>/dev/null || [ ! -e ${q(`/run/netns/${r.name}`)} ] || ok=1`);
      continue;
    }
    const at = r.attachment;
    const env = [
      "CNI_COMMAND=DEL",
      `CNI_CONTAINERID=${q(at.containerId)}`,
      `CNI_NETNS=${q(at.netns)}`,
      `CNI_IFNAME=${q(at.ifName)}`,
      `CNI_PATH=${q(r.pluginDirs.join(":"))}`,
    ].join(" ");
    const moved = withIpamOutside(r.list, home, scratch);
    for (let i = r.list.plugins.length - 1; i >= 0; i--) {
      const plugin = r.list.plugins[i]!;
      if (skippable(plugin, at)) continue;
      const file = `${record}.del-${files.length}`;
      const conf = pluginConfig(r.list, plugin, at, r.result);
      const outside = pluginConfig(moved, moved.plugins[i]!, at, r.result);
      await writeFile(file, JSON.stringify(conf));
      files.push(file);
      let pick = `f=${q(file)}`;
      if (JSON.stringify(outside) !== JSON.stringify(conf)) {
        await writeFile(`${file}.gone`, JSON.stringify(outside));
        files.push(`${file}.gone`);
        pick += `; [ -d ${q(`${home}/run`)} ] || f=${q(`${file}.gone`)}`;
      }
      const bin = await findPlugin(plugin.type, r.pluginDirs);
      const PATH = `PATH=${q(await pluginPath(plugin, r.result))}`;
      lines.push(`${pick}; ${PATH} ${env} ${q(bin)} < "$f" >/dev/null 2>&1 || ok=1`);
    }
  }
  lines.push(`rm -rf ${[...files, scratch].map(q).join(" ")}`, `[ $ok = 0 ] && rm -f "$rec"`, "exit 0");
  return new Promise((resolve) => {
    const child = spawn("/bin/sh", ["-c", lines.join("\n")], {
      detached: true,
      stdio: ["pipe", "ignore", "ignore"],
    });
    child.once("error", () => resolve(undefined));
    child.stdin!.on("error", () => {});
    child.once("spawn", () => {
      child.unref();
      if (afterExit) {
        held.push(child.stdin!); // closed by this process's exit
        (child.stdin as Writable & { unref?(): void }).unref?.();
      } else child.stdin!.end();
      // background work: it yields to the next run (its plugins start after its wait for the record)
      if (child.pid !== undefined) lowerPriority(child.pid);
      resolve(child.pid);
    });
  });
}
