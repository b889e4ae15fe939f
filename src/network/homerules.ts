/**
 * A home's own iptables rules for its default network, in place of per-run ones: outbound NAT for its
 * subnet (what the bridge plugin's `ipMasq` does per container) and FORWARD accepts for it (what the
 * firewall plugin does per container: needed where FORWARD's policy is DROP, as Docker sets it). Made
 * once per home and boot (a marker under /run beside the home's record), with one iptables-restore; the
 * comment `kindling-<tag> ...` names the owner, so the sweep removes them once the home is gone.
 */
import { mkdir, open, unlink } from "node:fs/promises";
import path from "node:path";
import { exec } from "../util/exec.js";
import { removeDeadRules } from "./iptables.js";
import { OWNERS_DIR } from "./owners.js";

const marker = (tag: string) => path.join(OWNERS_DIR, "homes", `${tag}.rules`);

export function homeRulesScript(tag: string, subnet: string): string {
  const c = (what: string) => `-m comment --comment "kindling-${tag} ${what}"`;
  return [
    "*nat",
    `-A POSTROUTING -s ${subnet} ! -d ${subnet} ${c("masquerade")} -j MASQUERADE`,
    "COMMIT",
    "*filter",
    `-I FORWARD -s ${subnet} ${c("forward")} -j ACCEPT`,
    `-I FORWARD -d ${subnet} -m conntrack --ctstate RELATED,ESTABLISHED ${c("forward")} -j ACCEPT`,
    "COMMIT",
    "",
  ].join("\n");
}

/** Makes the home's rules unless this boot already has them (a failed open per run afterwards). */
export async function ensureHomeRules(tag: string, subnet: string): Promise<void> {
  let fh: Awaited<ReturnType<typeof open>>;
  await mkdir(path.dirname(marker(tag)), { recursive: true });
  try {
    fh = await open(marker(tag), "wx");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return;
    throw err;
  }
  await fh.close();
  const r = await exec("iptables-restore", ["-w", "5", "--noflush"], {
    input: homeRulesScript(tag, subnet),
    allowFailure: true,
  });
  if (r.code !== 0) {
    await unlink(marker(tag)).catch(() => {});
    throw new Error(`iptables-restore of network kindling-${tag}'s rules failed: ${r.stderr.trim()}`);
  }
}

/** Removes the home's rules (its runs must have ended): the rules naming its tag, and the marker. */
export async function removeHomeRules(tag: string): Promise<void> {
  await removeDeadRules(async () => ({
    tagIsDead: (t) => t === tag,
    runIsDead: () => false,
    addressIsDead: () => false,
  }));
  await unlink(marker(tag)).catch(() => {});
}
