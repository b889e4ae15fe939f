/**
 * Finding and removing the iptables rules of networks that no longer exist, in one `iptables-save` and
 * (when something is found) one `iptables-restore --noflush` per table. Rules are told apart by what the
 * CNI plugins put in them: the bridge plugin's masquerade and portmap's DNAT rules carry a comment with
 * the network's name (`name: "kindling-<tag>" id: "<run>"`) and jump to a chain of their own
 * (CNI-<hash>, CNI-DN-<hash>); the firewall plugin's rules in CNI-FORWARD only name the address.
 */
import { exec } from "../util/exec.js";

export type Table = "nat" | "filter";

/** A chain made for one attachment (the bridge plugin's CNI-<hash>, portmap's CNI-DN-/CNI-SN-<hash>). */
const PER_ATTACHMENT_CHAIN = /^CNI-(?:DN-|SN-)?[0-9a-f]{16,}$/;
/** The tag in a Kindling network name inside a rule's comment. */
const TAG_IN_COMMENT = /--comment "(?:[^"\\]|\\.)*?kindling-([0-9a-f]{8})\b/;
/** The attachment (container id) a CNI plugin names in a rule's comment: `id: \"<id>\"`. */
const ID_IN_COMMENT = /--comment "(?:[^"\\]|\\.)*?id: \\"([^"\\]+)\\"/;
const FORWARD_ADDRESS = /^-A CNI-FORWARD (?:-[sd]) (\d+\.\d+\.\d+\.\d+)\/32 /;
/** A home's own chain (homerules.ts: portmap's mark chain), deleted with the home's rules. */
const HOME_CHAIN = /^KINDLING-([0-9a-f]{8})-MARK$/;

export interface Rule {
  chain: string;
  /** The line as iptables-save prints it, starting with -A. */
  line: string;
  target?: string;
}

/** The table's rules and its user-defined chains, as iptables-save prints them. */
export async function readRules(table: Table): Promise<{ rules: Rule[]; chains: string[] }> {
  const r = await exec("iptables-save", ["-t", table], { allowFailure: true });
  return r.code === 0
    ? { rules: parseRules(r.stdout), chains: parseChains(r.stdout) }
    : { rules: [], chains: [] };
}

/** The chains declared in `iptables-save` output (its `:NAME POLICY [counters]` lines). */
export function parseChains(text: string): string[] {
  return [...text.matchAll(/^:(\S+) /gm)].map((m) => m[1]!);
}

/** The rules of `iptables-save` output (its -A lines). */
export function parseRules(text: string): Rule[] {
  const rules: Rule[] = [];
  for (const line of text.split("\n")) {
    const m = /^-A (\S+) .*?-j (\S+)/.exec(line) ?? /^-A (\S+)/.exec(line);
    if (m) rules.push({ chain: m[1]!, line, target: m[2] });
  }
  return rules;
}

/**
 * What decides whether a rule is dead: the tags of live homes, the runs found dead, the host's address
 * prefixes. Asked after the rules were read (a rule is made after its bridge, its address and its
 * home's record, so none of those can be missed for a rule that was read).
 */
export interface Liveness {
  tagIsDead(tag: string): boolean;
  /** A run whose network this sweep released (its rules may outlive a DEL that failed). */
  runIsDead(id: string): boolean;
  /** For firewall rules that name only an address: is it one Kindling may have given and nobody uses? */
  addressIsDead(ip: string): boolean;
}

/**
 * The restore script deleting the dead rules of one table: rules whose comment names a dead network,
 * the per-attachment chains they jump to (and every rule jumping to those), CNI-FORWARD address rules
 * of dead addresses. Empty when nothing is dead.
 */
export function deadRulesScript(
  table: Table,
  rules: Rule[],
  live: Liveness,
  chainNames: string[] = [],
): { script: string; count: number } {
  const dead = new Set<Rule>();
  const chains = new Set<string>();
  for (const rule of rules) {
    const tag = TAG_IN_COMMENT.exec(rule.line)?.[1];
    const id = ID_IN_COMMENT.exec(rule.line)?.[1];
    if ((tag !== undefined && live.tagIsDead(tag)) || (id !== undefined && live.runIsDead(id))) {
      dead.add(rule);
      if (rule.target && PER_ATTACHMENT_CHAIN.test(rule.target)) chains.add(rule.target);
    }
    const ip = table === "filter" ? FORWARD_ADDRESS.exec(rule.line)?.[1] : undefined;
    if (ip !== undefined && live.addressIsDead(ip)) dead.add(rule);
  }
  // a dead home's own chain, with its rule or left empty (an older Kindling's sweep deleted only the rule)
  for (const c of [...chainNames, ...rules.map((r) => r.chain)]) {
    const tag = HOME_CHAIN.exec(c)?.[1];
    if (tag !== undefined && live.tagIsDead(tag)) chains.add(c);
  }
  for (const rule of rules) {
    if (rule.target && chains.has(rule.target)) dead.add(rule);
  }
  const lines: string[] = [];
  // first the jumps into the chains, then the chains' own rules go with -F, then the chains
  for (const rule of dead) if (!chains.has(rule.chain)) lines.push(rule.line.replace(/^-A /, "-D "));
  for (const c of chains) lines.push(`-F ${c}`);
  for (const c of chains) lines.push(`-X ${c}`);
  if (lines.length === 0) return { script: "", count: 0 };
  return { script: `*${table}\n${lines.join("\n")}\nCOMMIT\n`, count: dead.size + chains.size };
}

/**
 * Deletes the dead rules of both tables; returns how many rules and chains went. A restore that fails
 * (another sweeper or a plugin changed the table meanwhile) is retried once from a fresh read.
 */
export async function removeDeadRules(
  liveness: () => Promise<Liveness>,
): Promise<{ removed: number; errors: string[] }> {
  let removed = 0;
  const errors: string[] = [];
  for (const table of ["nat", "filter"] as const) {
    for (let attempt = 0; ; attempt++) {
      const { rules, chains } = await readRules(table);
      const { script, count } = deadRulesScript(table, rules, await liveness(), chains);
      if (!script) break;
      const r = await exec("iptables-restore", ["-w", "5", "--noflush"], {
        input: script,
        allowFailure: true,
      });
      if (r.code === 0) {
        removed += count;
        break;
      }
      if (attempt >= 1) {
        errors.push(`iptables-restore -t ${table}: ${r.stderr.trim().split("\n")[0]}`);
        break;
      }
    }
  }
  return { removed, errors };
}
