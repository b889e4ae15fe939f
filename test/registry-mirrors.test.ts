import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { sha256Digest } from "../src/registry/manifest.js";
import { originChunkSource } from "../src/registry/mirrored-chunks.js";
import { pullFromRegistry } from "../src/registry/pull.js";
import { pushKindlingImage } from "../src/registry/push.js";
import type { RegistrySettings } from "../src/registry/settings.js";
import { exec } from "../src/util/exec.js";
import { runCli } from "./helpers/cli.js";
import {
  freePort,
  gzipLayer,
  loadOciLayout,
  OciLayoutWriter,
  startRegistry,
  type TestRegistry,
  tinyKindlingImage,
} from "./helpers/registry.js";

// registries.conf mirrors (one serving, one down) and insecure registries, and --platform on a
// multi-platform index, against real docker-registry instances.

let upstream: TestRegistry;
let mirror: TestRegistry;
let down: string; // host:port where nothing listens
let work: string;
let tmpDir: string;
/** Manifest digests: what the upstream and the mirror serve for app:v1, and the index entries. */
const digests: Record<string, string> = {};

const layer = (files: Record<string, string>) => gzipLayer(work, files);

/** A registries.conf for the upstream with these mirrors (all plain HTTP, as is the upstream). */
async function conf(name: string, mirrors: string[]): Promise<string> {
  const file = path.join(work, `${name}.conf`);
  const lines = [`[[registry]]`, `location = "${upstream.host}"`, "insecure = true"];
  for (const m of mirrors) lines.push("[[registry.mirror]]", `location = "${m}"`, "insecure = true");
  await writeFile(file, `${lines.join("\n")}\n`);
  return file;
}

const settingsFor = (registriesConf: string): RegistrySettings => ({
  home: work,
  kindlingAuthFile: "/nonexistent",
  registriesConf,
});

function kindling(args: string[], env: Record<string, string> = {}) {
  return runCli(args, {
    home: path.join(work, "home"),
    env: { KINDLING_AUTH_FILE: "/nonexistent", KINDLING_REGISTRIES_CONF: "/nonexistent", ...env },
  });
}

before(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "kindling-mirrors-"));
  tmpDir = path.join(work, "tmp");
  await mkdir(tmpDir);
  [upstream, mirror] = await Promise.all([startRegistry(), startRegistry()]);
  down = `127.0.0.1:${await freePort()}`;

  const up = await OciLayoutWriter.create(path.join(work, "up"));
  const upImage = await up.image([await layer({ from: "upstream\n" })]);
  digests.upstream = upImage.digest;
  await up.tag(upImage, "v1");
  // A multi-platform index: amd64, arm64, arm/v7 (each image says which it is in a file).
  const amd64 = await up.image([await layer({ arch: "amd64\n" })], { architecture: "amd64" });
  const arm64 = await up.image([await layer({ arch: "arm64\n" })], { architecture: "arm64" });
  const armv7 = await up.image([await layer({ arch: "arm/v7\n" })], { architecture: "arm" });
  digests.amd64 = amd64.digest;
  digests.arm64 = arm64.digest;
  digests.armv7 = armv7.digest;
  await up.tag(
    await up.index([
      amd64,
      arm64,
      { ...armv7, platform: { os: "linux", architecture: "arm", variant: "v7" } },
    ]),
    "multi",
  );
  await loadOciLayout(upstream, up.dir, "v1", "team/app");
  await loadOciLayout(upstream, up.dir, "multi", "team/multi");

  const mir = await OciLayoutWriter.create(path.join(work, "mir"));
  const mirImage = await mir.image([await layer({ from: "mirror\n" })]);
  digests.mirror = mirImage.digest;
  await mir.tag(mirImage, "v1");
  await loadOciLayout(mirror, mir.dir, "v1", "team/app");
});

after(async () => {
  await Promise.all([upstream?.stop(), mirror?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

describe("registries.conf mirrors", () => {
  test("mirrors are tried in order: one down, the next one serves", async () => {
    const file = await conf("down-then-serving", [down, mirror.host]);
    const r = await pullFromRegistry(`${upstream.host}/team/app:v1`, {
      insecure: false,
      tmpDir,
      quiet: true,
      settings: settingsFor(file),
    });
    assert.equal(r.manifestDigest, digests.mirror, "the mirror's image, not the upstream's");
    if (r.kind === "image") await r.dispose();
  });

  test("a mirror that is down: the registry itself serves; --debug says so", async () => {
    const file = await conf("down-only", [down]);
    const r = await kindling(["--debug", "image", "pull", `${upstream.host}/team/app:v1`], {
      KINDLING_REGISTRIES_CONF: file,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(`debug: mirror ${down}/team/app failed: .*cannot reach http://${down}`),
    );
    const pulled = await pullFromRegistry(`${upstream.host}/team/app:v1`, {
      insecure: false,
      tmpDir,
      quiet: true,
      settings: settingsFor(file),
    });
    assert.equal(pulled.manifestDigest, digests.upstream);
    if (pulled.kind === "image") await pulled.dispose();
  });

  test("without the insecure setting the registry is spoken to over HTTPS (and fails)", async () => {
    const r = await kindling(["image", "pull", `${upstream.host}/team/app:v1`]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /is it a plain-HTTP registry\? use --insecure/);
  });

  test("every endpoint failing: the registry's error, with what the mirrors said", async () => {
    const file = await conf("all-down", [down]);
    await assert.rejects(
      pullFromRegistry(`${upstream.host}/team/nothing:v1`, {
        insecure: false,
        tmpDir,
        quiet: true,
        settings: settingsFor(file),
      }),
      new RegExp(`returned 404 .*\\(mirrors tried first: ${down}: .*cannot reach`),
    );
  });

  test("chunks of a pulled Kindling image come from a mirror first", async () => {
    const { image, chunk } = tinyKindlingImage();
    // Pushed to the mirror only: the upstream cannot serve the manifest nor the chunk.
    await pushKindlingImage(`${mirror.host}/team/kindling:v1`, { insecure: true, quiet: true }, image);
    const file = await conf("chunks", [down, mirror.host]);
    const settings = settingsFor(file);
    const r = await pullFromRegistry(`${upstream.host}/team/kindling:v1`, {
      insecure: false,
      tmpDir,
      quiet: true,
      settings,
    });
    assert.equal(r.kind, "kindling");
    if (r.kind !== "kindling" || r.origin.kind !== "registry") return assert.fail("a registry origin");
    assert.equal(
      r.origin.registry,
      upstream.host,
      "the origin stays the registry: mirrors are resolved per fetch",
    );
    assert.equal(r.origin.insecure, true, "as registries.conf says");
    const source = originChunkSource(r.origin, { settings, attempts: 1 });
    assert.deepEqual(await source.fetch(sha256Digest(chunk), chunk.length), chunk);
    assert.deepEqual(
      await source.fetch(sha256Digest(chunk), chunk.length),
      chunk,
      "the down mirror is skipped",
    );
    const noMirror = originChunkSource(r.origin, {
      settings: settingsFor(await conf("none", [])),
      attempts: 1,
    });
    await assert.rejects(noMirror.fetch(sha256Digest(chunk), chunk.length), /404/);
  });

  test("a bad registries.conf is one line naming the file and the line", async () => {
    const file = path.join(work, "bad.conf");
    await writeFile(file, "[[registry]]\nlocation = \n");
    const r = await kindling(["image", "pull", `${upstream.host}/team/app:v1`], {
      KINDLING_REGISTRIES_CONF: file,
    });
    assert.equal(r.code, 125);
    assert.match(r.stderr, new RegExp(`^kindling: ${file} is not valid TOML at line 2: .*\\n$`));
  });
});

describe("--platform", () => {
  const pull = (platform?: string) =>
    pullFromRegistry(`${upstream.host}/team/multi:multi`, {
      insecure: true,
      tmpDir,
      quiet: true,
      settings: settingsFor("/nonexistent"),
      platform: platform ? { os: "linux", ...parse(platform) } : undefined,
    });
  const parse = (p: string) => {
    const [architecture, variant] = p.split("/");
    return { architecture: architecture!, ...(variant ? { variant } : {}) };
  };

  test("picks the asked platform from the index; the host's by default", async () => {
    for (const [platform, want] of [
      ["arm64", digests.arm64],
      ["arm64/v8", digests.arm64],
      ["arm/v7", digests.armv7],
      ["amd64", digests.amd64],
    ] as const) {
      const r = await pull(platform);
      assert.equal(r.manifestDigest, want, platform);
      if (r.kind === "image") await r.dispose();
    }
    if (process.arch === "x64") {
      const r = await pull();
      assert.equal(r.manifestDigest, digests.amd64);
      if (r.kind === "image") await r.dispose();
    }
  });

  test("kindling image pull --platform converts that image", async () => {
    const ref = `${upstream.host}/team/multi:multi`;
    const r = await kindling(["image", "pull", ref, "--insecure", "--platform", "linux/arm64"]);
    assert.equal(r.code, 0, r.stderr);
    const out = path.join(work, "arm64.tar");
    const exported = await kindling(["image", "export", ref, "-o", out]);
    assert.equal(exported.code, 0, exported.stderr);
    assert.equal((await exec("tar", ["-xOf", out, "./arch"])).stdout, "arm64\n");
    // registries.conf's insecure holds for push too: no --insecure needed.
    const pushed = await kindling(["image", "push", ref, `${upstream.host}/team/pushed:v1`], {
      KINDLING_REGISTRIES_CONF: await conf("push", []),
    });
    assert.equal(pushed.code, 0, pushed.stderr);
  });

  test("a platform the index lacks: one line listing what it offers", async () => {
    const r = await kindling([
      "image",
      "pull",
      `${upstream.host}/team/multi:multi`,
      "--insecure",
      "--platform",
      "linux/s390x",
    ]);
    assert.equal(r.code, 125);
    assert.equal(
      r.stderr,
      `kindling: ${upstream.host}/team/multi:multi has no linux/s390x image (it offers: linux/amd64, linux/arm64, linux/arm/v7); choose one with --platform\n`,
    );
    const bad = await kindling(["image", "pull", `${upstream.host}/team/multi:multi`, "--platform", "linux"]);
    assert.equal(bad.code, 125);
    assert.match(bad.stderr, /^kindling: invalid platform "linux": expected os\/arch\[\/variant\]/);
  });

  test("a single-platform image is refused for another --platform", async () => {
    const r = await pullFromRegistry(`${upstream.host}/team/app:v1`, {
      insecure: true,
      tmpDir,
      quiet: true,
      settings: settingsFor("/nonexistent"),
      platform: { os: "linux", architecture: "arm64" },
    }).catch((err: Error) => err);
    assert.ok(r instanceof Error);
    assert.match(r.message, /is a single linux\/amd64 image, not linux\/arm64/);
  });
});
