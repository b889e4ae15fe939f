// Paths of the test images built by scripts/fixtures/*.sh (cached under .cache/fixtures). A test
// that needs one builds it on first use, so a single test file also runs on its own.
import { mkdtemp, rm, stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { stopIdleShared } from "../../src/lazy/index.js";
import { removeHomeNetwork } from "../../src/network/conflist.js";
import { sweepNetwork } from "../../src/network/sweep.js";
import { exec } from "../../src/util/exec.js";
import { KindlingHome } from "../../src/util/home.js";

/** The repository root (this file is compiled to dist/test/helpers/). */
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const FIXTURES = path.join(REPO, ".cache", "fixtures");

const SCRIPT_OF: Record<string, string> = {
  "busybox-oci": "busybox",
  "busybox-docker.tar": "busybox",
  "busybox-rootfs.tar": "busybox",
  "multilayer-oci": "multilayer",
  "multilayer-docker.tar": "multilayer",
  "multilayer-ocitar.tar": "multilayer",
  hostile: "hostile",
  "debian-minbase.tar": "debian-minbase",
  "debian-minbase-plus.tar": "debian-minbase",
  "debian-big.tar": "debian-big",
};

/** The path of fixture `name`, built by its script if it is not there yet. */
export async function fixture(name: keyof typeof SCRIPT_OF | string): Promise<string> {
  const p = path.join(FIXTURES, name);
  const exists = await stat(p).then(
    () => true,
    () => false,
  );
  if (!exists) {
    const script = SCRIPT_OF[name.split("/")[0]!];
    if (!script) throw new Error(`unknown fixture ${name}`);
    await exec("bash", [path.join(REPO, "scripts", "fixtures", `${script}.sh`), FIXTURES]);
  }
  return p;
}

/** A fresh KINDLING_HOME under /tmp; remove() stops its idle lazy daemons and deletes it. */
export async function tempHome(): Promise<KindlingHome & { remove(): Promise<void> }> {
  const dir = await mkdtemp("/tmp/kindling-test-home-");
  const home = new KindlingHome(dir).ensure() as KindlingHome & { remove(): Promise<void> };
  home.remove = async () => {
    // a service (and its containers' supervisors) a test or an auto-starting CLI left under this home
    await (await import("./service.js")).stopServiceAndContainers(dir);
    await stopIdleShared(home);
    await removeHomeNetwork(home); // the home's bridge, if a run made one
    await rm(dir, { recursive: true, force: true });
    await sweepNetwork(); // the network of a run killed in this home (quick: files only, unless one is found)
  };
  return home;
}

/** Unpacks an image's block image (reassembled from its chunks) into a fresh dir; remove it after. */
export async function unpackImage(home: KindlingHome, name: string): Promise<string> {
  const { writeBlockImage } = await import("../../src/image/export.js");
  const dir = await mkdtemp("/tmp/kindling-test-tree-");
  const img = path.join(dir, "image.squashfs");
  await writeBlockImage(home, name, img, false);
  await exec("unsquashfs", ["-no-progress", "-quiet", "-d", path.join(dir, "root"), img]);
  await rm(img);
  return dir;
}

/** The xattrs of a path (not following a symlink), as name -> hex. */
export async function xattrs(p: string): Promise<Record<string, string>> {
  const r = await exec("getfattr", ["-h", "-d", "-m", "-", "-e", "hex", "--absolute-names", p]);
  const out: Record<string, string> = {};
  for (const line of r.stdout.split("\n")) {
    const m = /^([^#=][^=]*)=0x([0-9a-f]*)$/.exec(line.trim());
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}
