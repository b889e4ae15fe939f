/**
 * Startup profiles (issue 13): which chunks of an image a first run read, in order. The first run
 * of an image in a home that has no profile for it records one (profiles/<image hex>.json);
 * `image push` puts it in the artifact's config blob and `image pull` writes it into the new home,
 * so a cold start on another worker fetches those chunks at once, in parallel, ahead of the reads.
 * Bounded: the first RECORD_WINDOW_MS after the mount, at most MAX_PROFILE_CHUNKS chunks. A missing
 * or stale profile means no prefetch; a corrupt one is ignored with a warning.
 */
import { mkdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { writeFileAtomic } from "../util/atomic.js";
import type { KindlingHome } from "../util/home.js";
import { readJsonFile } from "../util/jsonfile.js";
import type { ChunkCache } from "./cache.js";
import { chunksIn } from "./chunkmap.js";

export const MAX_PROFILE_CHUNKS = 4096;
/** Reads after this long past the mount are not startup any more. */
export const RECORD_WINDOW_MS = 30_000;

/** What a profile file (and the pushed config's `startupProfile`) holds. */
export interface StartupProfile {
  /** The image (block index digest) the chunk numbers refer to. */
  image: string;
  /** Chunk numbers in the block index, in first-read order, distinct. */
  chunks: number[];
}

export const profilePath = (home: KindlingHome, digest: string) =>
  path.join(home.root, "profiles", `${digest.replace(/^sha256:/, "")}.json`);
/**
 * Beside it, local only (never pushed): the byte ranges the recorded run read, merged, in first-read
 * order: finer than chunks, for a profile-ordered rebuild (blockimage/sortlist.ts).
 */
export const profileReadsPath = (home: KindlingHome, digest: string) =>
  path.join(home.root, "profiles", `${digest.replace(/^sha256:/, "")}.reads.json`);
export const MAX_PROFILE_RANGES = 16_384;

/**
 * Checks a profile against the image it is for: the chunk list, or why it is unusable.
 * `stale` (made for another image) is no error; `corrupt` deserves a warning.
 */
export function checkProfile(
  value: unknown,
  digest: string,
  chunkCount: number,
): { chunks: number[] } | { stale: string } | { corrupt: string } {
  const p = value as Partial<StartupProfile> | null;
  if (!p || typeof p !== "object" || typeof p.image !== "string" || !Array.isArray(p.chunks)) {
    return { corrupt: "not a startup profile (wants image and chunks)" };
  }
  if (p.image !== digest) return { stale: `profile is for image ${p.image}` };
  if (p.chunks.length > MAX_PROFILE_CHUNKS) return { corrupt: `more than ${MAX_PROFILE_CHUNKS} chunks` };
  const seen = new Set<number>();
  for (const i of p.chunks) {
    if (!Number.isInteger(i) || i < 0 || i >= chunkCount || seen.has(i)) {
      return { corrupt: `chunk number ${JSON.stringify(i)} is not a distinct chunk of the image` };
    }
    seen.add(i);
  }
  return { chunks: p.chunks };
}

/** The home's profile file for `digest` as parsed JSON, or undefined if there is none. */
export function readProfileFile(home: KindlingHome, digest: string): Promise<unknown> {
  return readJsonFile(profilePath(home, digest));
}

export async function writeProfile(home: KindlingHome, profile: StartupProfile): Promise<void> {
  const file = profilePath(home, profile.image);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFileAtomic(file, `${JSON.stringify(profile)}\n`);
}

/** Drops the home's profile for `digest`: the image's next first run records a new one. */
export async function removeProfile(home: KindlingHome, digest: string): Promise<void> {
  await rm(profilePath(home, digest), { force: true });
  await rm(profileReadsPath(home, digest), { force: true });
}

export async function writeProfileReads(
  home: KindlingHome,
  digest: string,
  ranges: [number, number][],
): Promise<void> {
  await writeFileAtomic(profileReadsPath(home, digest), `${JSON.stringify({ image: digest, ranges })}\n`);
}

/** The recorded run's read ranges for `digest`, or undefined (none, or unreadable). */
export async function readProfileReads(
  home: KindlingHome,
  digest: string,
): Promise<[number, number][] | undefined> {
  try {
    const v = JSON.parse(await readFile(profileReadsPath(home, digest), "utf8")) as {
      image?: string;
      ranges?: [number, number][];
    };
    return v.image === digest && Array.isArray(v.ranges) ? v.ranges : undefined;
  } catch {
    return undefined;
  }
}

/** Notes the chunks readers touch, in first-touch order, within the recording bounds. */
export class ProfileRecorder {
  readonly chunks: number[] = [];
  /** [start, end) of what was read, merged with the previous range when they touch. */
  readonly ranges: [number, number][] = [];
  private readonly seen = new Set<number>();
  private readonly until = Date.now() + RECORD_WINDOW_MS;
  /** Bumped on each new chunk, so the owner writes only when something changed. */
  version = 0;

  constructor(private readonly cache: ChunkCache) {}

  touch(pos: number, len: number): void {
    if (this.chunks.length >= MAX_PROFILE_CHUNKS || Date.now() > this.until) return;
    const last = this.ranges.at(-1);
    if (last && pos >= last[0] && pos <= last[1]) {
      if (pos + len > last[1]) {
        last[1] = pos + len;
        this.version++;
      }
    } else if (this.ranges.length < MAX_PROFILE_RANGES) {
      this.ranges.push([pos, pos + len]);
      this.version++;
    }
    for (const i of chunksIn(this.cache.index, pos, len)) {
      if (this.seen.has(i)) continue;
      this.seen.add(i);
      this.chunks.push(i);
      this.version++;
    }
  }
}

/**
 * Fetches the profile's chunks in its order, `concurrency` at once, in the background: each fetch
 * obeys the fetch deadlines and yields to readers (the limiter serves a waiting reader first).
 */
export async function prefetchProfile(
  cache: ChunkCache,
  chunks: number[],
  concurrency: number,
): Promise<void> {
  const p = cache.stats.profile;
  p.state = "running";
  let next = 0;
  const worker = async () => {
    while (next < chunks.length) {
      const i = chunks[next++];
      try {
        if (await cache.warm(i)) {
          p.chunks++;
          p.bytes += cache.index.chunks[i].length;
        }
      } catch {
        p.errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
  p.state = "done";
}
