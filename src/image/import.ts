import { createWriteStream } from "node:fs";
import { open, rm, stat } from "node:fs/promises";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { checkImageName } from "../store/names.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { indexTar, memberKey } from "./archive.js";
import { buildImage } from "./build.js";
import { detectCompression, openLayer } from "./compression.js";
import { type ResolvedImage, resolveDockerArchive, resolveOciLayout } from "./manifest.js";
import { dirFiles, tarFiles } from "./source.js";
import { tarReader } from "./tar.js";
import type { ImageRecord } from "./types.js";
import { makeTempDir } from "./workdir.js";

export type ImportFormat = "oci-layout" | "docker-archive" | "oci-archive" | "rootfs-tar";

/** Splits "<path>[:tag]": the tag is taken only if the whole string is not itself an existing path. */
export async function parseImportSpec(spec: string): Promise<{ path: string; tag?: string }> {
  const exists = (p: string) =>
    stat(p).then(
      () => true,
      () => false,
    );
  if (await exists(spec)) return { path: spec };
  const i = spec.lastIndexOf(":");
  if (i > 0 && !spec.slice(i + 1).includes("/") && (await exists(spec.slice(0, i)))) {
    return { path: spec.slice(0, i), tag: spec.slice(i + 1) };
  }
  throw new KindlingError(`${spec}: no such file or directory`);
}

export interface ImportOptions {
  name: string;
  progress?: boolean;
}

/** Whether a (compressed) tar holds manifest.json or an OCI layout at its top: one streaming pass. */
async function looksLikeImageArchive(file: string): Promise<boolean> {
  const opened = await openLayer({ path: file });
  const tar = tarReader(opened.stream);
  const seen = new Set<string>();
  try {
    for (;;) {
      const e = await tar.next();
      if (!e) break;
      const key = memberKey(e.name);
      if (key === "manifest.json" || key === "index.json" || key === "oci-layout") seen.add(key);
    }
  } finally {
    opened.stream.destroy();
  }
  return seen.has("manifest.json") || (seen.has("index.json") && seen.has("oci-layout"));
}

/** Imports an OCI layout dir, a docker-save archive (old or OCI style) or a plain rootfs tar. */
export async function importImage(
  home: KindlingHome,
  spec: string,
  opts: ImportOptions,
): Promise<ImageRecord & { format: ImportFormat }> {
  checkImageName(opts.name); // before any work: a bad name leaves nothing behind
  const { path: src, tag } = await parseImportSpec(spec);
  const st = await stat(src);
  if (st.isFile() && st.size === 0) {
    throw new KindlingError(`${src}: the file is empty (not an image archive or a tar)`);
  }
  home.ensure();
  const work = await makeTempDir(home.tmp, "import");
  const build = async (resolved: ResolvedImage, format: ImportFormat) => {
    const record = await buildImage(home, {
      name: opts.name,
      layers: resolved.layers,
      configJson: resolved.configJson,
      origin: { kind: "local" },
      progress: opts.progress,
    });
    return { ...record, format };
  };
  try {
    let resolved: ResolvedImage;
    let format: ImportFormat;
    if ((await stat(src)).isDirectory()) {
      const files = dirFiles(src);
      if (!(await files.has("index.json"))) {
        throw new KindlingError(`${src}: not an OCI image layout (no index.json)`);
      }
      resolved = await resolveOciLayout(files, tag);
      format = "oci-layout";
    } else {
      // Archives are read in place by offset, which needs an uncompressed tar; a compressed rootfs
      // tar is applied as it is (a layer), so only a compressed image archive is decompressed.
      let tarPath = src;
      const head = Buffer.alloc(6);
      const fh = await open(src, "r");
      await fh.read(head, 0, 6, 0).finally(() => fh.close());
      if (detectCompression(head) !== "none") {
        if (!(await looksLikeImageArchive(src))) {
          if (tag !== undefined)
            throw new KindlingError(`${src}: a plain rootfs tar has no tags (got :${tag})`);
          return await build({ configJson: null, layers: [{ path: src }] }, "rootfs-tar");
        }
        tarPath = path.join(work, "archive.tar");
        const opened = await openLayer({ path: src });
        await pipeline(opened.stream, createWriteStream(tarPath));
        await opened.finished();
      }
      const index = await indexTar(tarPath).catch((err: unknown) => {
        throw err instanceof KindlingError ? new KindlingError(`${src}: ${err.message}`) : err;
      });
      const files = tarFiles(index);
      if (await files.has("manifest.json")) {
        resolved = await resolveDockerArchive(files, tag);
        format = "docker-archive";
      } else if ((await files.has("index.json")) && (await files.has("oci-layout"))) {
        resolved = await resolveOciLayout(files, tag);
        format = "oci-archive";
      } else {
        if (tag !== undefined)
          throw new KindlingError(`${src}: a plain rootfs tar has no tags (got :${tag})`);
        if (index.members.size === 0) throw new KindlingError(`${src}: the tar holds no files`);
        resolved = { configJson: null, layers: [{ path: tarPath }] };
        format = "rootfs-tar";
      }
    }
    return await build(resolved, format);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
