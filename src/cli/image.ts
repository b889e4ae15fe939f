import { spawnSync } from "node:child_process";
import { stat } from "node:fs/promises";
import type { Command } from "commander";
import { config, configure } from "../config/index.js";
import { loadImage, readCatalog } from "../store/catalog.js";
import { checkImageName, imageNameProblem } from "../store/names.js";
import { KindlingError } from "../util/errors.js";
import { KindlingHome } from "../util/home.js";
import { fmtBytes } from "../util/progress.js";
import { api, runningService } from "./client.js";

function home(): KindlingHome {
  return new KindlingHome(config().home);
}

export function registerImageCommands(program: Command): void {
  const image = program
    .command("image")
    .description("Import, pull, push, list, inspect, export, mount and remove images");

  image
    .command("import")
    .description("import an OCI image layout dir, a docker-save archive or a rootfs tar")
    .argument("<path>", "the image: <path>[:tag]")
    .option("--name <name>", "name of the image (default: the file name, plus the tag)")
    .option(
      "--compression <c>",
      "the block image's compression: zstd[:level], lz4, lz4:hc, gzip[:level], xz, lzo, none (default: KINDLING_BLOCK_COMPRESSION, else zstd:3)",
    )
    .action(async (spec: string, opts: { name?: string; compression?: string }) => {
      configure(process.env, { blockCompression: opts.compression });
      const name =
        opts.name ??
        spec
          .split("/")
          .filter(Boolean)
          .at(-1)!
          .replace(/\.tar(\.gz|\.zst)?$/, "");
      if (opts.name === undefined && imageNameProblem(name)) {
        checkImageName(name, "the image name taken from the file name,");
      }
      // Each command's own modules when it runs: `image pull` (a cold start's first step) loads
      // neither the import pipeline nor export (bench/coldstart.ts).
      const { importImage } = await import("../image/import.js");
      const rec = await importImage(home(), spec, { name });
      process.stdout.write(`${rec.name} ${rec.digest} (${rec.format}, ${fmtBytes(rec.blockSize)})\n`);
    });

  image
    .command("pull")
    .description("pull an image (or a pushed Kindling image: index only, chunks lazily) from a registry")
    .argument("<ref>", "registry reference")
    .option("--insecure", "plain HTTP (registries.conf can say so per registry instead)", false)
    .option(
      "--platform <os/arch[/variant]>",
      "the image to pick from a multi-platform index (default: the host's)",
    )
    .action(async (ref: string, opts: { insecure: boolean; platform?: string }) => {
      const startDaemon = config().pullStartsDaemon;
      // The lazy daemon's process first, so its start overlaps the loading of the pull's modules too;
      // the pull uses or ends it (lazy/early.ts), and so does a bad --platform below.
      const early = startDaemon
        ? import("../lazy/early.js").then((m) => m.startEarlyIfLazy(home()))
        : undefined;
      try {
        const { pullImage } = await import("../image/registry.js");
        const { parsePlatform } = await import("../registry/platform.js");
        const platform = opts.platform === undefined ? undefined : parsePlatform(opts.platform);
        const rec = await pullImage(home(), ref, { insecure: opts.insecure, platform, startDaemon, early });
        process.stdout.write(`${rec.name} ${rec.digest}\n`);
      } finally {
        await (await early)?.cancel();
      }
    });

  image
    .command("push")
    .description("push a converted image (block index + chunks) to a registry as an OCI artifact")
    .argument("<name>", "image name")
    .argument("<ref>", "registry reference")
    .option("--insecure", "plain HTTP (registries.conf can say so per registry instead)", false)
    .option("--no-packs", "push only the chunks, no packs (segments, startup pack: docs/lazy.md)")
    .action(async (name: string, ref: string, opts: { insecure: boolean; packs: boolean }) => {
      const { pushImage } = await import("../image/registry.js");
      const res = await pushImage(home(), name, ref, { insecure: opts.insecure, packs: opts.packs });
      process.stdout.write(`${ref} ${res.manifestDigest}\n`);
    });

  image
    .command("ls")
    .description("list images")
    .option("--json", "JSON output", false)
    .action(async (opts: { json: boolean }) => {
      const { images, damaged } = await readCatalog(home());
      // Skipped, not fatal: the rest of the catalog still lists, and the record can be removed.
      for (const d of damaged) {
        process.stderr.write(
          `kindling: skipped the damaged catalog record ${d.file} (${d.problem}); \`kindling image rm ${d.name}\` removes it\n`,
        );
      }
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(images, null, 2)}\n`);
        return;
      }
      const rows = images.map((r) => [r.name, r.digest.slice(7, 19), fmtBytes(r.blockSize), r.origin.kind]);
      const w = [4, 6, 4, 6].map((min, i) => Math.max(min, ...rows.map((r) => r[i]!.length)));
      const line = (r: string[]) =>
        `${r
          .map((c, i) => c.padEnd(w[i]!))
          .join("  ")
          .trimEnd()}\n`;
      process.stdout.write(line(["NAME", "DIGEST", "SIZE", "ORIGIN"]));
      for (const r of rows) process.stdout.write(line(r));
    });

  image
    .command("inspect")
    .description("show an image's digest, sizes, chunks, run config and origin")
    .argument("<name>", "image name")
    .option("--json", "JSON output", false)
    .action(async (name: string, opts: { json: boolean }) => {
      const { describeImage } = await import("../image/describe.js");
      const d = await describeImage(home(), name);
      if (opts.json) process.stdout.write(`${JSON.stringify(d, null, 2)}\n`);
      else {
        for (const [k, v] of Object.entries(d)) {
          process.stdout.write(`${k}: ${typeof v === "object" ? JSON.stringify(v) : v}\n`);
        }
      }
    });

  image
    .command("export")
    .description("write the image's flattened filesystem as a tar")
    .argument("<name>", "image name")
    .requiredOption(
      "-o, --output <file>",
      "where to write the tar, as tar -f: a file, a device or FIFO, or - for stdout",
    )
    .action(async (name: string, opts: { output: string }) => {
      const { exportImage } = await import("../image/export.js");
      await exportImage(home(), name, opts.output);
    });

  image
    .command("rm")
    .description("remove images; chunks no other image uses are deleted")
    .argument("<names...>", "image names")
    .action(async (names: string[]) => {
      const h = home();
      // A running service keeps images' lazy daemons warm: it lets go of the image and removes it.
      const service = await runningService();
      const { removeImage } = await import("../image/remove.js");
      for (const name of names) {
        const freed = service
          ? await api(service.removeImage(name)).then((r) => ({ blobs: r.freedBlobs, bytes: r.freedBytes }))
          : await removeImage(h, name);
        process.stdout.write(`removed ${name} (freed ${freed.blobs} blobs, ${fmtBytes(freed.bytes)})\n`);
      }
    });

  image
    .command("profile")
    .description(
      "record the startup profile of NAME (the chunks CMD reads first, in order; `image push` sends it along): runs CMD with runc",
    )
    .argument("<name>", "image name")
    .argument("<cmd...>", "the command whose start to record (after --)")
    .action(async (name: string, cmd: string[]) => {
      const h = home();
      const record = await loadImage(h, name);
      const lazy = await loadLazy();
      const profile = await import("../lazy/profile.js");
      // The next daemon records: none of this image may stay running, and the old profile goes.
      await lazy.stopIdleShared(h, record.digest);
      await profile.removeProfile(h, record.digest);
      const run = spawnSync(
        process.execPath,
        [process.argv[1], "run", "--runtime", "runc", name, "--", ...cmd],
        {
          stdio: "inherit",
        },
      );
      if (run.status !== 0)
        throw new KindlingError(`image profile: the run of ${name} failed (status ${run.status})`);
      // The daemon writes what it recorded within a second.
      let chunks: number[] | undefined;
      for (let waited = 0; waited < 3000 && !chunks; waited += 100) {
        await new Promise((r) => setTimeout(r, 100));
        chunks = ((await profile.readProfileFile(h, record.digest)) as { chunks?: number[] } | undefined)
          ?.chunks;
      }
      if (!chunks) {
        throw new KindlingError(
          `image profile: no profile was recorded (is a container of ${name} still running?)`,
        );
      }
      process.stdout.write(`startup profile of ${name}: ${chunks.length} chunks\n`);
    });

  image
    .command("mount")
    .description("mount an image's files read-only at DIR (lazily loaded)")
    .argument("<name>", "image name")
    .argument("<dir>", "mountpoint")
    .action(async (name: string, dir: string) => {
      const h = home();
      await requireDirectory(dir, "image mount: the mountpoint");
      const record = await loadImage(h, name);
      const lazy = await loadLazy();
      await lazy.mountImage(h, record, dir);
    });

  image
    .command("umount")
    .description("unmount what `image mount` mounted")
    .argument("<dir>", "mountpoint")
    .action(async (dir: string) => {
      const lazy = await loadLazy();
      await lazy.umountImage(home(), dir);
    });
}

/** Throws a one-line KindlingError unless `dir` is an existing directory. */
async function requireDirectory(dir: string, what: string): Promise<void> {
  const st = await stat(dir).catch(() => null);
  if (!st) throw new KindlingError(`${what} ${dir} does not exist`);
  if (!st.isDirectory()) throw new KindlingError(`${what} ${dir} is not a directory`);
}

/** The lazy FUSE file (src/lazy) is another component; loaded on demand so the rest works without it. */
async function loadLazy(): Promise<typeof import("../lazy/index.js")> {
  try {
    return await import("../lazy/index.js");
  } catch (err) {
    throw new KindlingError(`image mount needs the lazy image component: ${(err as Error).message}`);
  }
}
