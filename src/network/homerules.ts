/**
 * A home's own iptables rules for its default network, in place of per-run ones: outbound NAT for its
 * subnet (what the bridge plugin's `ipMasq` does per container) and FORWARD accepts for it (what the
 * firewall plugin does per container: needed where FORWARD's policy is DROP, as Docker sets it); and the
 * chain portmap marks the connections it must masquerade with (its `externalSetMarkChain`: hairpin and
 * from 127.0.0.1), with the masquerade of what it marked towards the subnet. portmap would otherwise check
 * (and make) its own two chains and three jumps on every ADD: about half of its ADD's time. Made once per
 * home and boot (markers under /run beside the home's record; the mark chain has a marker of its own, so a
 * home whose rules came before it gets it on its next run), with one iptables-restore; the comment
 * `kindling-<tag> ...` names the owner, so the sweep removes them (and the chain) once the home is gone.
 */
import { mkdir, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { takePidLock } from "../host/pidlock.js";
import { exec } from "../util/exec.js";
import { removeDeadRules } from "./iptables.js";
import { exists, OWNERS_DIR } from "./owners.js";

/** The two parts, each made once per home and boot: the marker's suffix. */
type Part = "rules" | "mark";
const marker = (tag: string, part: Part) => path.join(OWNERS_DIR, "homes", `${tag}.${part}`);

/** The mark portmap sets by default (its markMasqBit 13), so its own and Kindling's chains agree. */
const MASQ_MARK = "0x2000/0x2000";

/** The chain portmap jumps to for connections it must masquerade (the default network's externalSetMarkChain). */
export function homeMarkChain(tag: string): string {
  return `KINDLING-${tag}-MARK`;
}

export function homeRulesScript(tag: string, subnet: string, parts: Part[] = ["rules", "mark"]): string {
  const c = (what: string) => `-m comment --comment "kindling-${tag} ${what}"`;
  const chain = homeMarkChain(tag);
  const nat: string[] = [];
  if (parts.includes("mark"))
    nat.push(`:${chain} - [0:0]`, `-A ${chain} ${c("mark")} -j MARK --set-xmark ${MASQ_MARK}`);
  if (parts.includes("rules"))
    nat.push(`-A POSTROUTING -s ${subnet} ! -d ${subnet} ${c("masquerade")} -j MASQUERADE`);
  if (parts.includes("mark"))
    nat.push(
      `-A POSTROUTING -d ${subnet} -m mark --mark ${MASQ_MARK} ${c("portmap masquerade")} -j MASQUERADE`,
    );
  const lines = ["*nat", ...nat, "COMMIT"];
  if (parts.includes("rules"))
    lines.push(
      "*filter",
      `-I FORWARD -s ${subnet} ${c("forward")} -j ACCEPT`,
      `-I FORWARD -d ${subnet} -m conntrack --ctstate RELATED,ESTABLISHED ${c("forward")} -j ACCEPT`,
      "COMMIT",
    );
  return [...lines, ""].join("\n");
}

/**
 * Makes the parts of the home's rules this boot does not have yet (a stat per part and run afterwards).
 * One process at a time per home (a lock file naming it): a run that finds another making them waits
 * for its markers, which are written once the rules exist (portmap's ADD fails on a missing mark chain).
 */
export async function ensureHomeRules(tag: string, subnet: string): Promise<void> {
  if (await allMade(tag)) return;
  await mkdir(path.dirname(marker(tag, "rules")), { recursive: true });
  const lock = path.join(OWNERS_DIR, "homes", `${tag}.lock`);
  const deadline = Date.now() + 10_000;
  while (!(await takePidLock(lock))) {
    if (await allMade(tag)) return;
    if (Date.now() > deadline)
      throw new Error(`network kindling-${tag}: its rules are being made by another process (${lock})`);
    await sleep(20);
  }
  try {
    const parts: Part[] = [];
    for (const part of PARTS) if (!(await exists(marker(tag, part)))) parts.push(part);
    if (parts.length === 0) return;
    const r = await exec("iptables-restore", ["-w", "5", "--noflush"], {
      input: homeRulesScript(tag, subnet, parts),
      allowFailure: true,
    });
    if (r.code !== 0)
      throw new Error(`iptables-restore of network kindling-${tag}'s rules failed: ${r.stderr.trim()}`);
    for (const part of parts) await writeFile(marker(tag, part), "");
  } finally {
    await unlink(lock).catch(() => {});
  }
}

const PARTS: Part[] = ["rules", "mark"];

async function allMade(tag: string): Promise<boolean> {
  for (const part of PARTS) if (!(await exists(marker(tag, part)))) return false;
  return true;
}

/** Removes the home's rules (its runs must have ended): the rules naming its tag, its chain, the markers. */
export async function removeHomeRules(tag: string): Promise<void> {
  await removeDeadRules(async () => ({
    tagIsDead: (t) => t === tag,
    runIsDead: () => false,
    addressIsDead: () => false,
  }));
  for (const part of PARTS) await unlink(marker(tag, part)).catch(() => {});
}
