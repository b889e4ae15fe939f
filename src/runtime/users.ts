import { readFile } from "node:fs/promises";
import { KindlingError } from "../util/errors.js";
import { resolveInRoot } from "./rootpath.js";
import type { UserSpec } from "./types.js";

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}
export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}
/** The image's /etc/passwd and /etc/group (empty if it has none). */
export interface UserDb {
  passwd: PasswdEntry[];
  groups: GroupEntry[];
}

export interface ResolvedUser {
  uid: number;
  gid: number;
  additionalGids: number[];
  home: string;
}

/** Reads /etc/passwd and /etc/group of a rootfs mounted on the host, never following links out of it. */
export async function readUserDb(rootfs: string): Promise<UserDb> {
  const read = async (p: string) => {
    try {
      return await readFile(await resolveInRoot(rootfs, p), "utf8");
    } catch {
      return "";
    }
  };
  return { passwd: parsePasswd(await read("/etc/passwd")), groups: parseGroup(await read("/etc/group")) };
}

export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length < 7 || !/^\d+$/.test(f[2]) || !/^\d+$/.test(f[3])) continue;
    out.push({ name: f[0], uid: Number(f[2]), gid: Number(f[3]), home: f[5] });
  }
  return out;
}

export function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length < 4 || !/^\d+$/.test(f[2])) continue;
    out.push({ name: f[0], gid: Number(f[2]), members: f[3].split(",").filter(Boolean) });
  }
  return out;
}

/**
 * Resolves a user as Docker does: a numeric UID need not exist in the image (its group is then 0
 * unless given); a name must; the group defaults to the passwd entry's; supplementary groups come
 * from /etc/group when the user has an entry.
 */
export function resolveUser(spec: UserSpec | undefined, db: UserDb): ResolvedUser {
  const want = spec ?? { user: "0" };
  const numeric = /^\d+$/.test(want.user);
  const entry = numeric
    ? db.passwd.find((p) => p.uid === Number(want.user))
    : db.passwd.find((p) => p.name === want.user);
  if (!numeric && !entry) throw new KindlingError(`user "${want.user}" is not in the image's /etc/passwd`);
  const uid = numeric ? Number(want.user) : entry!.uid;
  let gid = entry?.gid ?? 0;
  if (want.group !== undefined) {
    if (/^\d+$/.test(want.group)) gid = Number(want.group);
    else {
      const g = db.groups.find((x) => x.name === want.group);
      if (!g) throw new KindlingError(`group "${want.group}" is not in the image's /etc/group`);
      gid = g.gid;
    }
  }
  // An explicit group replaces supplementary groups, as with Docker's USER u:g.
  const additionalGids =
    entry && want.group === undefined
      ? db.groups.filter((g) => g.members.includes(entry.name) && g.gid !== gid).map((g) => g.gid)
      : [];
  return { uid, gid, additionalGids, home: entry?.home || "/" };
}

/** Parses an image config's USER ("", "name", "uid", "name:group", "uid:gid"). */
export function parseImageUser(user: string): UserSpec | undefined {
  if (!user) return undefined;
  const [u, g] = user.split(":", 2);
  return { user: u, group: g || undefined };
}
