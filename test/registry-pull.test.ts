import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { gzipSync } from "node:zlib";
import { RegistryChunkSource } from "../src/registry/chunks.js";
import { pullFromRegistry } from "../src/registry/pull.js";
import { KindlingError } from "../src/util/errors.js";
import { exec } from "../src/util/exec.js";
import {
  type Descriptor,
  loadOciLayout,
  MT,
  OciLayoutWriter,
  registryBlobPath,
  sha256,
  startRegistry,
  type TestRegistry,
  tarDir,
  zstdCompress,
} from "./helpers/registry.js";

// Pulls of real images from Debian's docker-registry, loaded with skopeo from hand-made OCI layouts.

let reg: TestRegistry;
let work: string;
let tmpDir: string;
let multiLayer: Descriptor;
let amd64: Descriptor;
let corrupt: Descriptor;
const layerBlobs: { data: Buffer; mediaType: string }[] = [];

async function tarOf(files: Record<string, string | Buffer>): Promise<Buffer> {
  const root = await mkdtemp(path.join(work, "root-"));
  for (const [name, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(root, name)), { recursive: true });
    await writeFile(path.join(root, name), content);
  }
  return tarDir(root);
}

before(async () => {
  // Keep the developer's ~/.docker/config.json out of it.
  process.env.KINDLING_AUTH_FILE = "/nonexistent/kindling-auth.json";
  work = await mkdtemp(path.join(os.tmpdir(), "kindling-pull-"));
  tmpDir = path.join(work, "tmp");
  await mkdir(tmpDir);
  reg = await startRegistry();

  // busybox-static as the base layer, gzip-compressed.
  const bb = path.join(work, "busybox-root");
  await mkdir(path.join(bb, "bin"), { recursive: true });
  await copyFile("/bin/busybox", path.join(bb, "bin", "busybox"));
  await symlink("busybox", path.join(bb, "bin", "sh"));
  const base = await tarDir(bb);
  const second = await tarOf({ "etc/hello": "from the zstd layer\n" });
  const third = await tarOf({ "etc/plain": "from the uncompressed layer\n" });
  layerBlobs.push(
    { data: gzipSync(base), mediaType: MT.layerGzip },
    { data: await zstdCompress(second), mediaType: MT.layerZstd },
    { data: third, mediaType: MT.layerTar },
  );

  const layout = await OciLayoutWriter.create(path.join(work, "layout"));
  const config = { Entrypoint: ["/bin/sh"], Cmd: ["-c", "echo hi"], Env: ["PATH=/bin"], WorkingDir: "/" };
  multiLayer = await layout.image(layerBlobs, { config });
  await layout.tag(multiLayer, "layers");

  // An index with an arm64 image first, the amd64 one, and a buildkit-style attestation entry.
  const arm = await layout.image(
    [{ data: gzipSync(await tarOf({ arch: "arm64" })), mediaType: MT.layerGzip }],
    {
      architecture: "arm64",
    },
  );
  amd64 = await layout.image([{ data: gzipSync(await tarOf({ arch: "amd64" })), mediaType: MT.layerGzip }]);
  const attestation = await layout.image([
    { data: Buffer.from("{}"), mediaType: "application/vnd.in-toto+json" },
  ]);
  const index = await layout.index([
    { ...arm, platform: { os: "linux", architecture: "arm64", variant: "v8" } },
    amd64,
    { ...attestation, platform: { os: "unknown", architecture: "unknown" } },
  ]);
  await layout.tag(index, "multi");

  // Its own layer, so corrupting it in the registry's storage touches no other test.
  corrupt = await layout.image([
    { data: gzipSync(await tarOf({ victim: "x".repeat(5000) })), mediaType: MT.layerGzip },
  ]);
  await layout.tag(corrupt, "corrupt");
  const armOnly = await layout.index([{ ...arm, platform: { os: "linux", architecture: "arm64" } }]);
  await layout.tag(armOnly, "armonly");
  const gzOnly = await layout.image([layerBlobs[0]!], { config });
  await layout.tag(gzOnly, "gz");

  // The same busybox, built the way umoci builds layouts (its own layer and config encoding).
  const um = path.join(work, "umoci");
  const bundle = path.join(work, "bundle");
  await exec("umoci", ["init", "--layout", um]);
  await exec("umoci", ["new", "--image", `${um}:bb`]);
  await exec("umoci", ["unpack", "--image", `${um}:bb`, bundle]);
  await mkdir(path.join(bundle, "rootfs", "bin"), { recursive: true });
  await copyFile("/bin/busybox", path.join(bundle, "rootfs", "bin", "busybox"));
  await exec("umoci", ["repack", "--image", `${um}:bb`, bundle]);
  await exec("umoci", [
    "config",
    "--image",
    `${um}:bb`,
    "--config.entrypoint",
    "/bin/busybox",
    "--config.cmd",
    "sh",
  ]);

  await Promise.all([
    loadOciLayout(reg, um, "bb", "test/umoci"),
    loadOciLayout(reg, layout.dir, "layers", "test/layers"),
    loadOciLayout(reg, layout.dir, "multi", "test/multi"),
    loadOciLayout(reg, layout.dir, "corrupt", "test/corrupt"),
    loadOciLayout(reg, layout.dir, "armonly", "test/armonly"),
    loadOciLayout(reg, layout.dir, "gz", "test/docker", "v2s2", { format: "v2s2" }),
  ]);
});

after(async () => {
  await reg?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

async function pullImage(ref: string) {
  const r = await pullFromRegistry(ref, { insecure: true, tmpDir, quiet: true });
  assert.equal(r.kind, "image");
  return r;
}

describe("pullFromRegistry", () => {
  test("downloads gzip, zstd and uncompressed layers verbatim, verified, and the config", async () => {
    const r = await pullImage(`${reg.host}/test/layers:layers`);
    try {
      assert.equal(r.reference, `${reg.host}/test/layers:layers`);
      assert.equal(r.manifestDigest, multiLayer.digest);
      assert.deepEqual(
        r.layers.map((l) => l.mediaType),
        [MT.layerGzip, MT.layerZstd, MT.layerTar],
      );
      for (const [i, l] of r.layers.entries()) {
        const bytes = await readFile(l.path);
        assert.deepEqual(bytes, layerBlobs[i]!.data);
        assert.equal(l.digest, sha256(bytes));
        assert.equal(l.size, bytes.length);
      }
      // Magic bytes tell the image engineer how to decompress.
      assert.deepEqual([...(await readFile(r.layers[0]!.path)).subarray(0, 2)], [0x1f, 0x8b]);
      assert.deepEqual([...(await readFile(r.layers[1]!.path)).subarray(0, 4)], [0x28, 0xb5, 0x2f, 0xfd]);
      const cfg = r.configJson as { config: { Entrypoint: string[] }; architecture: string };
      assert.deepEqual(cfg.config.Entrypoint, ["/bin/sh"]);
      assert.equal(cfg.architecture, "amd64");
    } finally {
      await r.dispose();
    }
    assert.deepEqual(await readdir(tmpDir), [], "dispose removes the layers");
  });

  test("an image built by umoci from busybox-static", async () => {
    const r = await pullImage(`${reg.host}/test/umoci:bb`);
    await r.dispose();
    const cfg = r.configJson as { config: { Entrypoint: string[]; Cmd: string[] } };
    assert.deepEqual(cfg.config.Entrypoint, ["/bin/busybox"]);
    assert.deepEqual(cfg.config.Cmd, ["sh"]);
    assert.equal(r.layers.length, 1);
    assert.equal(r.layers[0]!.mediaType, MT.layerGzip);
  });

  test("an image index resolves to linux/amd64, skipping other platforms and attestations", async () => {
    const r = await pullImage(`${reg.host}/test/multi:multi`);
    await r.dispose();
    assert.equal(r.manifestDigest, amd64.digest);
    assert.equal(r.layers.length, 1);
  });

  test("a reference pinned by digest pulls that manifest", async () => {
    const r = await pullImage(`${reg.host}/test/layers@${multiLayer.digest}`);
    await r.dispose();
    assert.equal(r.reference, `${reg.host}/test/layers@${multiLayer.digest}`);
    assert.equal(r.layers.length, 3);
  });

  test("a Docker schema 2 manifest (converted by skopeo) pulls too", async () => {
    const r = await pullImage(`${reg.host}/test/docker:v2s2`);
    await r.dispose();
    assert.equal(r.layers[0]!.mediaType, "application/vnd.docker.image.rootfs.diff.tar.gzip");
  });

  test("a blob corrupted in the registry's storage fails with its digest and leaves no files", async () => {
    const r0 = await pullImage(`${reg.host}/test/corrupt:corrupt`);
    const digest = r0.layers[0]!.digest;
    const size = r0.layers[0]!.size;
    await r0.dispose();
    await writeFile(registryBlobPath(reg, digest), Buffer.alloc(size, 0x41));
    await assert.rejects(
      pullFromRegistry(`${reg.host}/test/corrupt:corrupt`, { insecure: true, tmpDir, quiet: true }),
      (err: Error) =>
        err instanceof KindlingError && err.message.includes(digest) && /corrupted/.test(err.message),
    );
    assert.deepEqual(await readdir(tmpDir), []);
  });

  test("an index without linux/amd64 says which platforms it has", async () => {
    await assert.rejects(
      pullFromRegistry(`${reg.host}/test/armonly:armonly`, { insecure: true, tmpDir, quiet: true }),
      /no linux\/amd64 image \(it offers: linux\/arm64\); choose one with --platform/,
    );
  });

  test("an unknown tag is a KindlingError naming the registry and 404", async () => {
    await assert.rejects(
      pullFromRegistry(`${reg.host}/test/layers:nope`, { insecure: true, tmpDir, quiet: true }),
      (err: Error) =>
        err instanceof KindlingError &&
        err.message.includes(`registry ${reg.host} returned 404`) &&
        /MANIFEST_UNKNOWN/.test(err.message),
    );
  });

  test("https against a plain-HTTP registry suggests --insecure", async () => {
    await assert.rejects(
      pullFromRegistry(`${reg.host}/test/layers:layers`, { insecure: false, tmpDir, quiet: true }),
      /--insecure/,
    );
  });

  test("an aborted signal stops the pull", async () => {
    const ctl = new AbortController();
    ctl.abort();
    await assert.rejects(
      pullFromRegistry(`${reg.host}/test/layers:layers`, {
        insecure: true,
        tmpDir,
        quiet: true,
        signal: ctl.signal,
      }),
      (err: Error) => err.name === "AbortError",
    );
    assert.deepEqual(await readdir(tmpDir), []);
  });
});

/** A front for the registry whose `plan` decides, per request, to fail with 503, stall mid-body or forward. */
async function startFlaky(
  plan: (method: string, path: string, seen: number) => "503" | "stall" | "hang" | "forward",
) {
  const seen = new Map<string, number>();
  const ranges: string[] = [];
  const [host, port] = reg.host.split(":");
  const server = http.createServer((req, res) => {
    const key = `${req.method} ${req.url}`;
    const n = (seen.get(key) ?? 0) + 1;
    seen.set(key, n);
    const what = plan(req.method ?? "GET", req.url ?? "/", n);
    if (req.headers.range) ranges.push(req.headers.range);
    if (what === "503") {
      req.resume();
      res.writeHead(503).end("try later");
      return;
    }
    const up = http.request(
      { host, port: Number(port), method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        if (what === "forward") {
          upRes.pipe(res);
          return;
        }
        // Send about half of the body ("hang": all of it), then go silent with the connection open.
        const length = Number(upRes.headers["content-length"] ?? 0);
        const half = what === "hang" ? length : length / 2;
        let sent = 0;
        upRes.on("data", (d: Buffer) => {
          if (sent < half) res.write(d.subarray(0, Math.max(0, Math.min(d.length, half - sent))));
          sent += d.length;
        });
      },
    );
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const addr = server.address();
  return {
    host: `127.0.0.1:${typeof addr === "object" && addr ? addr.port : 0}`,
    seen,
    ranges,
    stop: () => {
      server.closeAllConnections();
      return new Promise((r) => server.close(r));
    },
  };
}

describe("transient failures", () => {
  test("a 503 on the manifest is retried; a layer body that stalls mid-way resumes with Range", async () => {
    const stalled = layerBlobs[0]!;
    const flaky = await startFlaky((method, url, n) => {
      if (n > 1 || method !== "GET") return "forward";
      if (url.includes("/manifests/")) return "503";
      if (url.endsWith(sha256(stalled.data))) return "stall";
      return "forward";
    });
    try {
      const r = await pullFromRegistry(`${flaky.host}/test/layers:layers`, {
        insecure: true,
        tmpDir,
        quiet: true,
        timeoutMs: 500,
      });
      assert.equal(r.kind, "image");
      if (r.kind !== "image") return;
      assert.deepEqual(await readFile(r.layers[0]!.path), stalled.data);
      await r.dispose();
      assert.equal(flaky.seen.get(`GET /v2/test/layers/blobs/${sha256(stalled.data)}`), 2);
      assert.equal(flaky.seen.get("GET /v2/test/layers/manifests/layers"), 2);
      assert.equal(flaky.ranges.length, 1);
      assert.match(flaky.ranges[0]!, /^bytes=[1-9]\d*-$/);
    } finally {
      await flaky.stop();
    }
  });

  test("a body that has every byte but never ends is verified from disk, not fetched again", async () => {
    const blob = layerBlobs[2]!;
    const flaky = await startFlaky((method, url, n) =>
      method === "GET" && n === 1 && url.endsWith(sha256(blob.data)) ? "hang" : "forward",
    );
    try {
      const r = await pullFromRegistry(`${flaky.host}/test/layers:layers`, {
        insecure: true,
        tmpDir,
        quiet: true,
        timeoutMs: 300,
      });
      assert.equal(r.kind, "image");
      if (r.kind !== "image") return;
      assert.deepEqual(await readFile(r.layers[2]!.path), blob.data);
      await r.dispose();
      assert.equal(flaky.seen.get(`GET /v2/test/layers/blobs/${sha256(blob.data)}`), 1);
      assert.deepEqual(flaky.ranges, []);
    } finally {
      await flaky.stop();
    }
  });

  test("RegistryChunkSource retries a 503 and gives up with the status after its attempts", async () => {
    const blob = layerBlobs[1]!;
    const flaky = await startFlaky((_m, url, n) =>
      url.includes("blobs") && (n === 1 || url.includes("0000")) ? "503" : "forward",
    );
    try {
      const origin = {
        kind: "registry",
        registry: flaky.host,
        repository: "test/layers",
        reference: "layers",
        insecure: true,
      } as const;
      const source = new RegistryChunkSource(origin, { attempts: 2 });
      assert.deepEqual(
        await source.fetch(sha256(blob.data) as `sha256:${string}`, blob.data.length),
        blob.data,
      );
      const never = `sha256:${"0".repeat(64)}` as const;
      await assert.rejects(
        source.fetch(never, 10),
        (err: Error) => /503/.test(err.message) && err.message.includes(never),
      );
    } finally {
      await flaky.stop();
    }
  });
});
