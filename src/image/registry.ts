import { constants } from "node:fs";
import { access } from "node:fs/promises";
import { config } from "../config/index.js";
import type { EarlyDaemon } from "../lazy/early.js";
import { checkProfile, readProfileFile, readProfileReads, writeProfile } from "../lazy/profile.js";
import type { Platform } from "../registry/platform.js";
import { pullFromRegistry } from "../registry/pull.js";
import { putBlob, readBlob } from "../store/blobs.js";
import { decodeBlockIndex } from "../store/blockindex.js";
import { loadImage, saveImage } from "../store/catalog.js";
import { withStoreLock } from "../store/lock.js";
import { checkImageName, imageNameProblem } from "../store/names.js";
import { checkPacks, planStartupRanges, readPacksFile, removePacks, writePacks } from "../store/packs.js";
import type { BlockIndex, Digest } from "../store/types.js";
import { debug } from "../util/debug.js";
import { errorMessage } from "../util/errors.js";
import type { KindlingHome } from "../util/home.js";
import { trace } from "../util/trace.js";
import type { ImageRecord } from "./types.js";

/**
 * `image pull`: a container image is converted here (buildImage); a Kindling artifact (pushed by
 * `image push`) brings only its block index, and its chunks are fetched lazily from the registry.
 * The image is recorded under the reference as typed and as normalized.
 */
export async function pullImage(
  home: KindlingHome,
  ref: string,
  opts: {
    insecure: boolean;
    progress?: boolean;
    signal?: AbortSignal;
    platform?: Platform;
    /** A lazily pulled image: start its lazy daemon in the background (the CLI: KINDLING_PULL_START_DAEMON). */
    startDaemon?: boolean;
    /**
     * The daemon's process, started early by the caller (lazy/early.ts; the CLI starts it before it
     * loads this module); this pull uses or ends it. Else, with startDaemon, the pull starts it.
     */
    early?: Promise<EarlyDaemon | undefined>;
  },
): Promise<ImageRecord> {
  home.ensure();
  // The lazy daemon's process starts now (if the caller has not), so its Node start overlaps our
  // fetches; it learns its image (or is ended) below.
  const early = await (opts.early ??
    (opts.startDaemon ? import("../lazy/early.js").then((m) => m.startEarlyIfLazy(home)) : undefined));
  try {
    return await pull(home, ref, opts, early);
  } finally {
    await early?.cancel(); // unless it was handed its image
  }
}

async function pull(
  home: KindlingHome,
  ref: string,
  opts: Parameters<typeof pullImage>[2],
  early: EarlyDaemon | undefined,
): Promise<ImageRecord> {
  const res = await pullFromRegistry(ref, {
    insecure: opts.insecure,
    platform: opts.platform,
    tmpDir: home.tmp,
    signal: opts.signal,
    quiet: opts.progress === false,
  });
  // Recorded as typed and as normalized; the typed form only if it is itself a valid image name
  // (e.g. not "docker://..."): the normalized one always is (parseReference checked it).
  trace("pull: manifest, config and index fetched");
  const names = [...new Set([ref, res.reference].filter((n) => imageNameProblem(n) === null))];
  if (names.length === 0) checkImageName(res.reference);
  let record: ImageRecord;
  if (res.kind === "image") {
    // Loaded here: a lazy pull (a cold start's first step) needs none of the image pipeline.
    const { buildImage } = await import("./build.js");
    try {
      record = await buildImage(home, {
        name: names[0]!,
        layers: res.layers.map((l) => ({ path: l.path })),
        configJson: res.configJson,
        origin: { kind: "local" },
        progress: opts.progress,
      });
    } finally {
      await res.dispose();
    }
    for (const alias of names.slice(1)) await saveImage(home, { ...record, name: alias });
    return record;
  }
  const index = decodeBlockIndex(res.index, res.indexDigest);
  record = {
    name: names[0]!,
    digest: res.indexDigest,
    blockSize: index.blockSize,
    config: res.runConfig,
    origin: res.origin,
    created: new Date().toISOString(),
  };
  const rec = record;
  await withStoreLock(home, async () => {
    await putBlob(home, res.index, res.indexDigest);
    for (const name of names) await saveImage(home, { ...rec, name });
  });
  await keepStartupProfile(home, res.startupProfile, res.indexDigest, index.chunks.length);
  await keepPacks(home, res.packs, res.indexDigest, index);
  trace("pull: recorded");
  if (opts.startDaemon) await startDaemonAfterPull(home, record, early);
  trace("pull: lazy daemon spawned");
  return record;
}

/**
 * Starts the pulled image's shared lazy daemon in the background (its mount and startup pack
 * overlap the pull's exit and the run's start; docs/lazy.md). It mounts the SquashFS too, so it
 * serves runc/runsc and VM runs alike. Never fails the pull: a host without FUSE just runs cold.
 */
async function startDaemonAfterPull(
  home: KindlingHome,
  record: ImageRecord,
  early: EarlyDaemon | undefined,
): Promise<void> {
  try {
    await access("/dev/fuse", constants.R_OK | constants.W_OK); // else no lazy runs here anyway
    const { startSharedInBackground } = await import("../lazy/client.js");
    await startSharedInBackground(
      home,
      record,
      { shared: { idleMs: config().lazyIdleMs }, lower: true },
      early,
    );
  } catch (err) {
    debug(`not starting the lazy daemon of ${record.name} after the pull: ${errorMessage(err)}`);
  }
}

/** `image push`: uploads the converted image (index + chunks) as an OCI artifact. */
export async function pushImage(
  home: KindlingHome,
  name: string,
  ref: string,
  opts: { insecure: boolean; progress?: boolean; signal?: AbortSignal; packs?: boolean },
): Promise<{ manifestDigest: Digest }> {
  const { policyFrom } = await import("../chunks/policy.js");
  const { chunkReaderFor } = await import("../chunks/sources.js");
  const { pushKindlingImage } = await import("../registry/push.js");
  const record = await loadImage(home, name);
  const index = await readBlob(home, record.digest, "block index");
  const decoded = decodeBlockIndex(index, record.digest);
  const chunks = new Map(decoded.chunks.map((c) => [c.digest, c.length]));
  const reader = chunkReaderFor(home, record.origin, policyFrom());
  // The startup profile a run here recorded travels with the image (a bad one stays home).
  const profile = checkProfile(
    await readProfileFile(home, record.digest),
    record.digest,
    decoded.chunks.length,
  );
  // Pack digests described by an earlier push (or the pull) of this image: not read again.
  const known = checkPacks(await readPacksFile(home, record.digest), decoded, record.digest);
  const res = await pushKindlingImage(
    ref,
    { insecure: opts.insecure, signal: opts.signal, quiet: opts.progress === false, packs: opts.packs },
    {
      record,
      index,
      readChunk: (d: Digest) => reader.read({ digest: d, length: chunks.get(d) ?? -1 }),
      startupProfile: "chunks" in profile ? { image: record.digest, chunks: profile.chunks } : undefined,
      startupChunks: "chunks" in profile ? profile.chunks : undefined,
      // The byte ranges the recorded run read (local only): a byte-exact startup pack.
      startupRanges:
        "chunks" in profile ? await startupRangesOf(home, record.digest, decoded.blockSize) : undefined,
      knownPacks: "packs" in known ? known.packs : undefined,
    },
  );
  if (res.packs) await writePacks(home, res.packs).catch(() => {}); // only a cache for the next push
  return { manifestDigest: res.manifestDigest };
}

/** The home's recorded read ranges of `digest`, planned for a startup pack (undefined: none recorded). */
async function startupRangesOf(
  home: KindlingHome,
  digest: Digest,
  blockSize: number,
): Promise<[number, number][] | undefined> {
  const reads = await readProfileReads(home, digest);
  const ranges = reads ? planStartupRanges(reads, blockSize) : [];
  return ranges.length > 0 ? ranges : undefined;
}

/** Writes a pulled image's startup profile into the home (a bad one: a warning, no profile). */
async function keepStartupProfile(
  home: KindlingHome,
  value: unknown,
  digest: Digest,
  chunkCount: number,
): Promise<void> {
  if (value === undefined) return;
  const checked = checkProfile(value, digest, chunkCount);
  if ("chunks" in checked) await writeProfile(home, { image: digest, chunks: checked.chunks });
  else if ("corrupt" in checked) {
    process.stderr.write(`warning: ignoring the image's startup profile: ${checked.corrupt}\n`);
  }
}

/** Writes a pulled image's packs into the home (bad ones: a warning, no packs; none: the old file goes). */
async function keepPacks(
  home: KindlingHome,
  value: unknown,
  digest: Digest,
  index: BlockIndex,
): Promise<void> {
  if (value === undefined) {
    await removePacks(home, digest);
    return;
  }
  const checked = checkPacks(value, index, digest);
  if ("packs" in checked) await writePacks(home, checked.packs);
  else if ("corrupt" in checked) {
    await removePacks(home, digest);
    process.stderr.write(`warning: ignoring the image's packs: ${checked.corrupt}\n`);
  }
}
