/**
 * The bench's images: built offline by scripts/fixtures/*.sh (cached in .cache/fixtures), imported
 * into a source home, pushed to the bench registry. Cold homes pull only the index from there.
 */
import { mkdir, rm, stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { writeBlockImage } from "../image/export.js";
import { importImage } from "../image/import.js";
import { pushImage } from "../image/registry.js";
import { exec } from "../util/exec.js";
import type { KindlingHome } from "../util/home.js";

/** The repository root (this file is compiled to dist/src/bench/). */
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const FIXTURES = path.join(REPO, ".cache", "fixtures");

export interface BenchImage {
  /** The `image` column. */
  name: string;
  /** What the image is, for the report. */
  description: string;
  /** Import spec under FIXTURES, and the script that builds it. */
  fixture: string;
  script: string;
}

export const IMAGES: Record<string, BenchImage> = {
  busybox: {
    name: "busybox",
    description: "busybox-static in one layer (tiny; used by the test)",
    fixture: "busybox-oci:latest",
    script: "busybox",
  },
  small: {
    name: "small",
    description: "Debian bookworm minbase (debootstrap), < 100 MB",
    fixture: "debian-minbase.tar",
    script: "debian-minbase",
  },
  large: {
    name: "large",
    description: "Debian minbase + 1 GiB of incompressible files, > 1 GB",
    fixture: "debian-big.tar",
    script: "debian-big",
  },
};

/** The fixture file of `img`, built by its script if missing (a debootstrap needs the apt mirror). */
export async function fixturePath(img: BenchImage): Promise<string> {
  const file = img.fixture.replace(/:[^/]*$/, "");
  const p = path.join(FIXTURES, file);
  const exists = await stat(p).then(
    () => true,
    () => false,
  );
  if (!exists) {
    await mkdir(FIXTURES, { recursive: true });
    await exec("bash", [path.join(REPO, "scripts", "fixtures", `${img.script}.sh`), FIXTURES]);
  }
  return path.join(FIXTURES, img.fixture);
}

/** Imports `img` into the source home and pushes it; returns the reference cold homes pull. */
export async function publishImage(
  source: KindlingHome,
  img: BenchImage,
  registryHost: string,
): Promise<string> {
  await importImage(source, await fixturePath(img), { name: img.name, progress: false });
  const ref = `${registryHost}/bench/${img.name}:latest`;
  await pushImage(source, img.name, ref, { insecure: true, progress: false });
  return ref;
}

/** The image's tree as a plain directory (for the runc-on-a-directory baseline). */
export async function unpackTree(source: KindlingHome, img: BenchImage, dir: string): Promise<string> {
  const file = path.join(source.tmp, `${img.name}.sqfs`);
  try {
    await writeBlockImage(source, img.name, file, false);
    await exec("unsquashfs", ["-no-progress", "-quiet", "-d", dir, file]);
  } finally {
    await rm(file, { force: true });
  }
  return dir;
}
