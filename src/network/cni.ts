/**
 * The CNI protocol (spec 1.0): a plugin is an executable found in CNI_PATH, called with CNI_COMMAND,
 * CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_PATH in its environment and its network config as
 * JSON on stdin; it answers with a result (ADD) or an error object on stdout.
 * A conflist is run plugin by plugin, each ADD getting the previous result as `prevResult`; DEL runs
 * the list in reverse and must tolerate what is already gone.
 */
import { spawn } from "node:child_process";
import { access, constants, mkdir, readlink, rename, rm, symlink } from "node:fs/promises";
import { setPriority } from "node:os";
import path from "node:path";
import { searchPath } from "../config/index.js";
import { KindlingError } from "../util/errors.js";

export type CniCommand = "ADD" | "DEL" | "CHECK";

/** A network configuration list (`.conflist`), as the spec defines it. */
export interface CniConfList {
  cniVersion: string;
  name: string;
  disableCheck?: boolean;
  plugins: CniPluginConf[];
}

/** One plugin's configuration; everything beyond `type` is the plugin's own. */
export interface CniPluginConf {
  type: string;
  capabilities?: Record<string, boolean>;
  [key: string]: unknown;
}

export interface CniInterface {
  name: string;
  mac?: string;
  mtu?: number;
  sandbox?: string;
}

export interface CniIp {
  address: string;
  gateway?: string;
  interface?: number;
}

export interface CniResult {
  cniVersion: string;
  interfaces?: CniInterface[];
  ips?: CniIp[];
  routes?: { dst: string; gw?: string }[];
  dns?: { nameservers?: string[]; domain?: string; search?: string[]; options?: string[] };
}

/** Where one attachment is: the container, its namespace and interface. */
export interface CniAttachment {
  containerId: string;
  netns: string;
  ifName: string;
  /** Capability arguments (runtimeConfig), e.g. { portMappings: [...] }: given to plugins that declare them. */
  capabilityArgs?: Record<string, unknown>;
}

/** A plugin failure: the plugin's own error object, shown on one line. */
export class CniError extends KindlingError {
  constructor(
    readonly plugin: string,
    readonly command: CniCommand,
    message: string,
    readonly cniCode?: number,
  ) {
    super(`CNI plugin ${plugin} ${command} failed: ${message}`);
  }
}

/** The plugin's executable: the first directory of `pluginDirs` that has it. */
export async function findPlugin(type: string, pluginDirs: string[]): Promise<string> {
  if (!/^[A-Za-z0-9._-]+$/.test(type))
    throw new KindlingError(`CNI plugin type "${type}" is not a valid name`);
  for (const dir of pluginDirs) {
    const p = path.join(dir, type);
    try {
      await access(p, constants.X_OK);
      return p;
    } catch {
      // not in this directory
    }
  }
  throw new KindlingError(
    `CNI plugin "${type}" not found in ${pluginDirs.join(":")} (apt-get install containernetworking-plugins)`,
  );
}

/**
 * The PATH a plugin runs with. portmap's DEL tries ip6tables as well as iptables (7 of its 16 iptables
 * processes here) whatever the attachment had; where the attachment's result has no IPv6 address
 * (Kindling's networks are IPv4 only) portmap gets a PATH whose only entry holds `iptables` alone
 * (a link under /run/kindling/network/bin4), so it finds no ip6tables and skips that part.
 */
export async function pluginPath(plugin: CniPluginConf, prevResult?: CniResult): Promise<string> {
  const path0 = searchPath("/usr/sbin:/usr/bin:/sbin:/bin");
  const v4only = prevResult?.ips?.every((ip) => !ip.address.includes(":"));
  if (plugin.type !== "portmap" || !v4only) return path0.join(":");
  return (await ipv4OnlyBin(path0)) ?? path0.join(":");
}

const BIN4 = "/run/kindling/network/bin4";
let bin4: Promise<string | undefined> | undefined;
function ipv4OnlyBin(dirs: string[]): Promise<string | undefined> {
  bin4 ??= (async () => {
    for (const dir of dirs) {
      const ipt = path.join(dir, "iptables");
      if (
        !(await access(ipt, constants.X_OK).then(
          () => true,
          () => false,
        ))
      )
        continue;
      await mkdir(BIN4, { recursive: true });
      const link = path.join(BIN4, "iptables");
      if ((await readlink(link).catch(() => undefined)) !== ipt) {
        const tmp = `${link}.${process.pid}`;
        await rm(tmp, { force: true });
        await symlink(ipt, tmp);
        await rename(tmp, link);
      }
      return BIN4;
    }
    return undefined;
  })().catch(() => undefined);
  return bin4;
}

/** One line from a plugin's error object ({code, msg, details}) or, failing that, its output. */
function errorText(stdout: string, stderr: string, code: number | null): { text: string; cniCode?: number } {
  try {
    const e = JSON.parse(stdout) as { code?: number; msg?: string; details?: string };
    if (typeof e.msg === "string") {
      const text = e.details ? `${e.msg}: ${e.details}` : e.msg;
      return { text: oneLine(text), cniCode: e.code };
    }
  } catch {
    // not JSON
  }
  const raw = (stderr.trim() || stdout.trim() || `exited with status ${code}`).slice(-500);
  return { text: oneLine(raw) };
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, "; ").trim();
}

/**
 * Runs one plugin once. `conf` is the complete config the plugin reads on stdin (name, cniVersion,
 * prevResult and runtimeConfig already filled in). Returns the parsed stdout for ADD, undefined else.
 */
/** `background`: work nobody waits for (the service's pool), run at a lower priority (nice 10). */
export interface PluginRunOptions {
  background?: boolean;
}

export function execPlugin(
  conf: CniPluginConf & { name: string; cniVersion: string },
  command: CniCommand,
  at: CniAttachment,
  pluginDirs: string[],
  opts: PluginRunOptions = {},
): Promise<CniResult | undefined> {
  return Promise.all([
    findPlugin(conf.type, pluginDirs),
    pluginPath(conf, conf.prevResult as CniResult),
  ]).then(
    ([bin, PATH]) =>
      new Promise((resolve, reject) => {
        const env: NodeJS.ProcessEnv = {
          // plugins run iptables and the IPAM plugin: they need a PATH, not Kindling's settings
          PATH,
          CNI_COMMAND: command,
          CNI_CONTAINERID: at.containerId,
          CNI_NETNS: at.netns,
          CNI_IFNAME: at.ifName,
          CNI_PATH: pluginDirs.join(":"),
        };
        const child = spawn(bin, [], { env, stdio: ["pipe", "pipe", "pipe"] });
        // (the plugin's children, host-local and iptables, start later and inherit it)
        if (opts.background && child.pid !== undefined) lowerPriority(child.pid);
        const out: Buffer[] = [];
        const err: Buffer[] = [];
        child.stdout.on("data", (d: Buffer) => out.push(d));
        child.stderr.on("data", (d: Buffer) => err.push(d));
        child.on("error", (e) => reject(new CniError(conf.type, command, e.message)));
        child.on("close", (code) => {
          const stdout = Buffer.concat(out).toString();
          if (code !== 0) {
            const { text, cniCode } = errorText(stdout, Buffer.concat(err).toString(), code);
            reject(new CniError(conf.type, command, text, cniCode));
            return;
          }
          if (command !== "ADD") return resolve(undefined);
          try {
            resolve(JSON.parse(stdout) as CniResult);
          } catch {
            reject(new CniError(conf.type, command, `result is not JSON: ${oneLine(stdout.slice(0, 200))}`));
          }
        });
        child.stdin.on("error", () => {});
        child.stdin.end(JSON.stringify(conf));
      }),
  );
}

/** The config a plugin of the list reads: the list's name and version, runtimeConfig, prevResult. */
export function pluginConfig(
  list: CniConfList,
  plugin: CniPluginConf,
  at: CniAttachment,
  prevResult?: CniResult,
): CniPluginConf & { name: string; cniVersion: string } {
  const conf: CniPluginConf & { name: string; cniVersion: string } = {
    ...plugin,
    name: list.name,
    cniVersion: list.cniVersion,
  };
  const runtimeConfig: Record<string, unknown> = {};
  for (const [cap, on] of Object.entries(plugin.capabilities ?? {})) {
    if (on && at.capabilityArgs?.[cap] !== undefined) runtimeConfig[cap] = at.capabilityArgs[cap];
  }
  if (Object.keys(runtimeConfig).length > 0) conf.runtimeConfig = runtimeConfig;
  if (prevResult) conf.prevResult = prevResult;
  return conf;
}

/**
 * A plugin that has nothing to do for this attachment: portmap without port mappings changes nothing
 * on ADD and finds nothing on DEL, and skipping it saves a process (and its iptables calls) per run.
 */
export function skippable(plugin: CniPluginConf, at: CniAttachment): boolean {
  if (plugin.type !== "portmap") return false;
  const ports = at.capabilityArgs?.portMappings;
  return !Array.isArray(ports) || ports.length === 0;
}

/** Nice 10 for a process of background work; one that is gone already is no matter. */
export function lowerPriority(pid: number): void {
  try {
    setPriority(pid, 10);
  } catch {
    // exited already
  }
}

/** ADD through the list, each plugin's result the next one's prevResult; the last result is returned. */
export async function addNetworkList(
  list: CniConfList,
  at: CniAttachment,
  pluginDirs: string[],
  opts: PluginRunOptions = {},
): Promise<CniResult> {
  let result: CniResult | undefined;
  for (const plugin of list.plugins) {
    if (skippable(plugin, at)) continue;
    const conf = pluginConfig(list, plugin, at, result);
    result = (await execPlugin(conf, "ADD", at, pluginDirs, opts)) ?? result;
  }
  if (!result) throw new KindlingError(`CNI network ${list.name}: no plugin returned a result`);
  return result;
}

/** CHECK through the list with the result ADD returned (skipped when the list disables it). */
export async function checkNetworkList(
  list: CniConfList,
  at: CniAttachment,
  result: CniResult,
  pluginDirs: string[],
): Promise<void> {
  if (list.disableCheck) return;
  for (const plugin of list.plugins) {
    if (skippable(plugin, at)) continue;
    await execPlugin(pluginConfig(list, plugin, at, result), "CHECK", at, pluginDirs);
  }
}

/**
 * DEL through the list in reverse, with the cached ADD result as prevResult when there is one. Every
 * plugin is called even if one fails (so an IPAM lease is released even if iptables cleanup failed);
 * the first failure is thrown afterwards.
 */
export async function delNetworkList(
  list: CniConfList,
  at: CniAttachment,
  pluginDirs: string[],
  result?: CniResult,
): Promise<void> {
  let first: unknown;
  for (const plugin of [...list.plugins].reverse()) {
    if (skippable(plugin, at)) continue;
    try {
      await execPlugin(pluginConfig(list, plugin, at, result), "DEL", at, pluginDirs);
    } catch (err) {
      first ??= err;
    }
  }
  if (first) throw first;
}
