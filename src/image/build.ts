import { createHash } from "node:crypto";
import { chmod, mkdir, open, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { sortFileText } from "../blockimage/sortlist.js";
import { buildSquashfs, type SquashfsOptions, squashfsOptions } from "../blockimage/squashfs.js";
import { config } from "../config/index.js";
import { blobSize, putBlob } from "../store/blobs.js";
import { writeBlockIndex } from "../store/blockindex.js";
import { findImage, saveImage } from "../store/catalog.js";
import { type ChunkingSpec, chunkFile, DEFAULT_CHUNKING } from "../store/chunker.js";
import { collectGarbage } from "../store/gc.js";
import { withStoreLock } from "../store/lock.js";
import { BLOCK_INDEX_MEDIA_TYPE, type BlockIndex, type ChunkRef, type Digest } from "../store/types.js";
import { KindlingError } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { type Progress, progress } from "../util/progress.js";
import { Scope } from "../util/scope.js";
import { LayerApplier, RetryOnDiskError } from "./apply.js";
import { type FileRange, openLayer } from "./compression.js";
import { runConfigFromImageConfig } from "./config.js";
import type { ImageOrigin, ImageRecord } from "./types.js";
import { makeTempDir, makeTreeDir, onDisk, sweepStaleTrees, TMPFS_DIR, type TreeDir } from "./workdir.js";

export interface BuildImageInput {
  name: string;
  /** Layer blobs (gzip, zstd or plain tar), bottom first; a range when the layer sits inside an archive. */
  layers: (FileRange | { path: string })[];
  /** The OCI/docker image config JSON, or null for a plain rootfs (defaults apply). */
  configJson: unknown;
  origin: ImageOrigin;
  /** Progress lines/bars on stderr (default true). */
  progress?: boolean;
  /** Default: the blockCompression setting's (KINDLING_BLOCK_COMPRESSION). */
  squashfs?: SquashfsOptions;
  chunking?: ChunkingSpec;
  /**
   * Files (paths relative to the image root) to place first in the block image, in this order
   * (`mksquashfs -sort`): a startup profile's files (blockimage/sortlist.ts).
   */
  layoutOrder?: string[];
}

const quiet: Progress = { update() {}, done() {} };

/** Applies layers into a fresh tree under `dir`; returns the tree's path. */
export async function materializeLayers(
  dir: string,
  layers: FileRange[],
  show = true,
  maxBytes = Number.POSITIVE_INFINITY,
  unorderedXattrs = false,
): Promise<string> {
  const root = path.join(dir, "rootfs");
  await mkdir(root);
  await chmod(root, 0o755); // explicit: not subject to the umask of whoever builds it
  const sizes = await Promise.all(
    layers.map(async (l) => (l.end !== undefined ? l.end - (l.start ?? 0) : (await stat(l.path)).size)),
  );
  const total = sizes.reduce((a, b) => a + b, 0);
  const bar = show ? progress(`applying ${layers.length} layer(s)`, total) : quiet;
  let done = 0;
  const applier = new LayerApplier(root, maxBytes, unorderedXattrs);
  for (const [i, layer] of layers.entries()) {
    const opened = await openLayer(layer, (n) => {
      done += n;
      bar.update(done);
    });
    try {
      await applier.apply(opened.stream, `layer ${i + 1} (${path.basename(layer.path)})`);
    } catch (err) {
      // A decompressor failure explains a truncated tar better than the tar error does.
      opened.stream.destroy();
      const why = await Promise.race([
        opened.finished().then(
          () => null,
          (e: Error) => e,
        ),
        new Promise<null>((r) => setTimeout(() => r(null), 200)),
      ]);
      throw why ?? err;
    }
    await opened.finished();
  }
  await applier.finish();
  bar.done();
  return root;
}

/** Cuts the block image into chunks stored as blobs; returns the index (not yet stored). */
async function storeChunks(
  home: KindlingHome,
  image: string,
  chunking: ChunkingSpec,
  show: boolean,
): Promise<BlockIndex> {
  const size = (await stat(image)).size;
  const bar = show ? progress("storing chunks", size) : quiet;
  const whole = createHash("sha256");
  const chunks = await chunkFile(image, chunking, async (ref, bytes) => {
    whole.update(bytes);
    await putBlob(home, bytes, ref.digest);
    bar.update(ref.offset + ref.length);
  });
  bar.done();
  return {
    mediaType: BLOCK_INDEX_MEDIA_TYPE,
    format: "squashfs",
    blockSize: size,
    blockDigest: `sha256:${whole.digest("hex")}`,
    chunking,
    chunks,
  };
}

/** Re-stores chunks that a concurrent garbage collection removed before we held the lock. */
async function ensureChunks(home: KindlingHome, image: string, chunks: ChunkRef[]): Promise<void> {
  const fh = await open(image, "r");
  try {
    for (const c of chunks) {
      if ((await blobSize(home, c.digest)) === c.length) continue;
      const b = Buffer.alloc(c.length);
      await fh.read(b, 0, c.length, c.offset);
      await putBlob(home, b, c.digest);
    }
  } finally {
    await fh.close();
  }
}

/**
 * Builds an image from its layers: apply them, make the deterministic SquashFS block image, cut it
 * into content-addressed chunks, store index and chunks, and record the image under `name`.
 * The same layers give the same digest on any machine.
 */
export async function buildImage(home: KindlingHome, input: BuildImageInput): Promise<ImageRecord> {
  home.ensure();
  await sweepStaleTrees([home.tmp, TMPFS_DIR]);
  const show = input.progress ?? true;
  return Scope.with(async (scope) => {
    // Registered with a scope so Ctrl-C (closeAllScopes) removes them too: a tree on tmpfs is RAM.
    const work = await makeTempDir(home.tmp, "build");
    scope.defer(`remove ${work}`, () => rm(work, { recursive: true, force: true }));
    const layerBytes = (
      await Promise.all(
        input.layers.map(async (l) =>
          "end" in l && l.end !== undefined ? l.end - (l.start ?? 0) : (await stat(l.path)).size,
        ),
      )
    ).reduce((a, b) => a + b, 0);
    // Compressed layers expand (~3x for typical gzip'd distro layers).
    let tree = await makeTreeDir(home.tmp, layerBytes * 4);
    const dropTree = (t: TreeDir) => rm(t.dir, { recursive: true, force: true });
    scope.defer("remove the build tree", () => dropTree(tree));
    let root: string;
    try {
      root = await materializeLayers(tree.dir, input.layers, show, tree.maxBytes, tree.tmpfs);
    } catch (err) {
      if (!(err instanceof RetryOnDiskError && tree.tmpfs)) throw err;
      // Larger than the tmpfs budget, or needs ordered xattrs: start again on disk.
      await dropTree(tree);
      tree = await onDisk(home.tmp);
      if (show)
        process.stderr.write(`building the tree on disk instead of tmpfs (${(err as Error).message})\n`);
      root = await materializeLayers(tree.dir, input.layers, show, tree.maxBytes);
    }
    const image = path.join(work, "image.squashfs");
    if (show) process.stderr.write("building the block image (squashfs)\n");
    let squashfs = input.squashfs ?? squashfsOptions(config().blockCompression);
    const sortText = input.layoutOrder ? sortFileText(root, input.layoutOrder) : "";
    if (sortText) {
      const sortFile = path.join(work, "layout.sort");
      await writeFile(sortFile, sortText);
      squashfs = { ...squashfs, extraArgs: [...(squashfs.extraArgs ?? []), "-sort", sortFile] };
    }
    await buildSquashfs(root, image, squashfs);
    await dropTree(tree); // free the space before the chunks take it
    const index = await storeChunks(home, image, input.chunking ?? DEFAULT_CHUNKING, show);
    const record: ImageRecord = {
      name: input.name,
      digest: "sha256:" as Digest,
      blockSize: index.blockSize,
      config: runConfigFromImageConfig(input.configJson),
      origin: input.origin,
      created: new Date().toISOString(),
    };
    await withStoreLock(home, async () => {
      await ensureChunks(home, image, index.chunks);
      record.digest = await writeBlockIndex(home, index);
      const previous = await findImage(home, record.name);
      await saveImage(home, record);
      // Re-importing under a name replaces the image: free what only the old one used.
      if (previous && previous.digest !== record.digest) await collectGarbage(home);
    });
    return record;
  }).catch((err: unknown) => {
    if (err instanceof KindlingError) throw err;
    throw new KindlingError(`building image ${input.name} failed: ${(err as Error).message}`);
  });
}
