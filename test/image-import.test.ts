import assert from "node:assert/strict";
import { cp, lstat, mkdir, readdir, readFile, readlink, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { importImage } from "../src/image/import.js";
import { readBlockIndex } from "../src/store/blockindex.js";
import { listImages, loadImage } from "../src/store/catalog.js";
import { localBytes } from "../src/store/local.js";
import { KindlingError } from "../src/util/errors.js";
import { exec } from "../src/util/exec.js";
import { fixture, tempHome, unpackImage, xattrs } from "./helpers/fixtures.js";

const quiet = { progress: false };

describe("image import", () => {
  let home: Awaited<ReturnType<typeof tempHome>>;
  before(async () => {
    home = await tempHome();
  });
  after(async () => {
    await home.remove();
  });

  test("busybox: an OCI layout, its docker-save archive and its rootfs tar", async () => {
    const oci = await importImage(home, `${await fixture("busybox-oci")}:latest`, {
      name: "bb-oci",
      ...quiet,
    });
    const docker = await importImage(home, await fixture("busybox-docker.tar"), {
      name: "bb-docker",
      ...quiet,
    });
    const rootfs = await importImage(home, await fixture("busybox-rootfs.tar"), {
      name: "bb-rootfs",
      ...quiet,
    });
    assert.equal(oci.format, "oci-layout");
    assert.equal(docker.format, "docker-archive");
    assert.equal(rootfs.format, "rootfs-tar");
    // Same layer content, same block image: the digest depends on the tree only.
    assert.equal(docker.digest, oci.digest);
    assert.deepEqual(oci.config, {
      entrypoint: ["/bin/busybox"],
      cmd: ["sh"],
      env: ["PATH=/bin"],
      workingDir: "/root",
      user: "",
    });
    assert.equal(rootfs.config.cmd[0], "/bin/sh");
    const rec = await loadImage(home, "bb-oci");
    assert.equal(rec.digest, oci.digest);
    const index = await readBlockIndex(home, rec.digest);
    assert.equal(index.blockSize, rec.blockSize);
    assert.equal(await localBytes(home, index), rec.blockSize);
    assert.deepEqual(
      (await listImages(home)).map((r) => r.name),
      ["bb-docker", "bb-oci", "bb-rootfs"],
    );
    const dir = await unpackImage(home, "bb-rootfs");
    try {
      assert.equal(await readlink(path.join(dir, "root/bin/sh")), "busybox");
      assert.equal((await lstat(path.join(dir, "root/tmp"))).mode & 0o7777, 0o1777);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("an OCI layout tag picks the image; a missing tag is an error naming it", async () => {
    const layout = await fixture("busybox-oci");
    const byTag = await importImage(home, `${layout}:1.0`, { name: "bb-tag", ...quiet });
    assert.equal(byTag.digest, (await loadImage(home, "bb-oci")).digest);
    await assert.rejects(importImage(home, `${layout}:nope`, { name: "x", ...quiet }), (err: Error) => {
      assert.ok(err instanceof KindlingError);
      assert.match(err.message, /no image tagged "nope"/);
      return true;
    });
  });

  test("multi-layer image: whiteouts, opaque dirs, links, owners, modes, devices, fifo, xattrs", async () => {
    const rec = await importImage(home, `${await fixture("multilayer-oci")}:v1`, { name: "ml", ...quiet });
    // The nested index's linux/amd64 manifest was taken, not the arm64 decoy.
    assert.deepEqual(rec.config, {
      entrypoint: ["/bin/sh", "-c"],
      cmd: ["echo hi"],
      env: ["PATH=/bin", "FOO=bar"],
      workingDir: "/data",
      user: "1000:1000",
    });
    const dir = await unpackImage(home, "ml");
    const r = (p: string) => path.join(dir, "root", p);
    const exists = (p: string) =>
      lstat(r(p)).then(
        () => true,
        () => false,
      );
    try {
      // Whiteouts (layer 2) remove lower files and dirs; the markers themselves never appear.
      assert.equal(await exists("etc/keep/a"), false);
      assert.equal(await exists("etc/gone"), false);
      assert.equal(await exists("etc/keep/.wh.a"), false);
      // Opaque dir: lower content gone, this layer's entries (before and after the marker) kept.
      assert.equal(await exists("data/opq/lower1"), false);
      assert.equal(await exists("data/opq/sub"), false);
      assert.equal(await readFile(r("data/opq/before"), "utf8"), "before\n");
      assert.equal(await readFile(r("data/opq/after"), "utf8"), "after\n");
      assert.equal(await exists("data/opq/.wh..wh..opq"), false);
      assert.equal((await lstat(r("data/opq"))).mode & 0o7777, 0o700);
      // Hardlinks within a layer and across layers share the inode.
      const orig = await lstat(r("data/orig"));
      assert.equal((await lstat(r("data/hl"))).ino, orig.ino);
      assert.equal((await lstat(r("data/samelayer-hl"))).ino, orig.ino);
      assert.equal(orig.nlink, 3);
      assert.equal(orig.uid, 7);
      assert.equal(orig.gid, 8);
      // Later layers overwrite; a dir replaces a file and a file a dir.
      assert.equal(await readFile(r("etc/keep/b"), "utf8"), "b3\n");
      assert.equal((await lstat(r("etc/keep/b"))).mode & 0o7777, 0o640);
      assert.ok((await lstat(r("data/becomes-dir"))).isDirectory());
      assert.equal(await readFile(r("data/becomes-dir/inside"), "utf8"), "in\n");
      assert.equal(await readFile(r("data/becomes-file"), "utf8"), "now a file\n");
      // Modes, owners, special files.
      assert.equal((await lstat(r("bin/su"))).mode & 0o7777, 0o4755);
      const sg = await lstat(r("bin/sg"));
      assert.equal(sg.mode & 0o7777, 0o2755);
      assert.equal(sg.gid, 42);
      assert.equal((await lstat(r("tmp"))).mode & 0o7777, 0o1777);
      const home1000 = await lstat(r("home/user"));
      assert.equal(home1000.uid, 1000);
      assert.equal(home1000.mode & 0o7777, 0o750);
      assert.equal(home1000.mtimeMs, 1700000005 * 1000);
      assert.equal(await readlink(r("etc/alink")), "keep/a");
      assert.equal(await readlink(r("etc/abslink")), "/etc/keep/b");
      assert.equal((await lstat(r("etc/abslink"))).mtimeMs, 1700000007 * 1000);
      const devnull = await lstat(r("dev/null"));
      assert.ok(devnull.isCharacterDevice());
      assert.equal(devnull.rdev, (1 << 8) | 3);
      assert.ok((await lstat(r("run/fifo"))).isFIFO());
      assert.equal((await lstat(r("run/fifo"))).mode & 0o7777, 0o620);
      // xattrs, including the binary security.capability.
      const xa = await xattrs(r("bin/ping"));
      assert.equal(xa["security.capability"], "0000000200040000000000000000000000000000");
      assert.equal(xa["user.kindling"], Buffer.from("yes").toString("hex"));
      // The root's mtime comes from the layer's "./" entry; dirs without an entry get 0.
      assert.equal((await lstat(r("."))).mtimeMs, 1700000001 * 1000);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("the same image as docker-save and as OCI-layout-in-tar gives the same digest", async () => {
    const ml = await loadImage(home, "ml");
    const docker = await importImage(home, await fixture("multilayer-docker.tar"), {
      name: "ml-d",
      ...quiet,
    });
    const ocitar = await importImage(home, `${await fixture("multilayer-ocitar.tar")}:v1`, {
      name: "ml-t",
      ...quiet,
    });
    assert.equal(docker.format, "docker-archive");
    assert.equal(ocitar.format, "oci-archive");
    assert.equal(docker.digest, ml.digest);
    assert.equal(ocitar.digest, ml.digest);
    assert.deepEqual(docker.config, ml.config);
  });

  test("a layer blob whose content does not match its digest is refused", async () => {
    const copy = path.join(home.root, "tampered-oci");
    await cp(await fixture("multilayer-oci"), copy, { recursive: true });
    const blobs = path.join(copy, "blobs", "sha256");
    let tampered = "";
    for (const hex of await readdir(blobs)) {
      const b = await readFile(path.join(blobs, hex));
      const at = b.indexOf("now a file");
      if (at >= 0) {
        b.write("NOW", at); // same length: the tar stays valid, only the digest can tell
        await writeFile(path.join(blobs, hex), b);
        tampered = hex;
      }
    }
    assert.ok(tampered, "found the plain layer");
    await assert.rejects(
      importImage(home, `${copy}:v1`, { name: "tampered", ...quiet }),
      new RegExp(`layer sha256:${tampered} .* content has digest sha256:`),
    );
    await assert.rejects(loadImage(home, "tampered"));
  });

  describe("documents named by digest are checked where an image enters", () => {
    type Doc = {
      digest: string;
      manifests?: Doc[];
      config?: Doc;
      mediaType?: string;
      platform?: { architecture: string };
    };
    /** A copy of the v1 image's layout and the blob paths of its manifest and config. */
    const layoutCopy = async (name: string) => {
      const dir = path.join(home.root, name);
      await cp(await fixture("multilayer-oci"), dir, { recursive: true });
      const blob = (d: Doc) => path.join(dir, "blobs", "sha256", d.digest.slice(7));
      const top = JSON.parse(await readFile(path.join(dir, "index.json"), "utf8")) as { manifests: Doc[] };
      let desc = top.manifests.find((d) => d.mediaType?.includes("index"))!;
      let doc = JSON.parse(await readFile(blob(desc), "utf8")) as Doc;
      while (doc.manifests) {
        desc = doc.manifests.find((d) => d.platform?.architecture === "amd64")!;
        doc = JSON.parse(await readFile(blob(desc), "utf8")) as Doc;
      }
      return { dir, manifest: blob(desc), config: blob(doc.config!), configDigest: doc.config!.digest };
    };
    /** Same length, another command: only the digest can tell. */
    const tamperConfig = async (file: string) => {
      const text = await readFile(file, "utf8");
      const cfg = JSON.parse(text) as { config: { Cmd?: string[] } };
      cfg.config.Cmd = ["/bin/sh", "-c", "echo tampered"];
      await writeFile(file, JSON.stringify(cfg));
    };

    test("an OCI layout whose manifest no longer matches index.json is refused, naming the blob", async () => {
      const l = await layoutCopy("tampered-manifest");
      const m = await readFile(l.manifest, "utf8");
      await writeFile(l.manifest, `${m.trimEnd()} `);
      await assert.rejects(
        importImage(home, `${l.dir}:v1`, { name: "tm", ...quiet }),
        new RegExp(`manifest blobs/sha256/${path.basename(l.manifest)} does not match its digest`),
      );
      await assert.rejects(loadImage(home, "tm"));
    });

    test("an OCI layout whose config no longer matches its manifest is refused, naming the blob", async () => {
      const l = await layoutCopy("tampered-config");
      await tamperConfig(l.config);
      await assert.rejects(
        importImage(home, `${l.dir}:v1`, { name: "tc", ...quiet }),
        new RegExp(`config blobs/sha256/${l.configDigest.slice(7)} does not match its digest`),
      );
    });

    test("an OCI-layout tar with a tampered config is refused", async () => {
      const l = await layoutCopy("tampered-ocitar");
      await tamperConfig(l.config);
      const tar = path.join(home.root, "tampered-ocitar.tar");
      await exec("tar", ["-C", l.dir, "-cf", tar, "."]);
      await assert.rejects(
        importImage(home, `${tar}:v1`, { name: "tt", ...quiet }),
        /config blobs\/sha256\/[0-9a-f]{64} does not match its digest/,
      );
    });

    test("a docker-save archive with a tampered config or layer is refused", async () => {
      const dir = path.join(home.root, "tampered-docker");
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir);
      await exec("tar", ["-C", dir, "-xf", await fixture("multilayer-docker.tar")]);
      const entry = JSON.parse(await readFile(path.join(dir, "manifest.json"), "utf8"))[0];
      const pack = async (name: string) => {
        const tar = path.join(home.root, name);
        await exec("tar", ["-C", dir, "-cf", tar, "."]);
        return tar;
      };
      const configPath = path.join(dir, entry.Config);
      const original = await readFile(configPath);
      await tamperConfig(configPath);
      await assert.rejects(
        importImage(home, await pack("td-config.tar"), { name: "td", ...quiet }),
        new RegExp(`config ${entry.Config} does not match its digest`),
      );
      await writeFile(configPath, original);
      const layer = path.join(dir, entry.Layers[2]);
      const b = await readFile(layer);
      b[b.length - 1024 - 600] ^= 1; // inside the last file's data: still a valid tar
      await writeFile(layer, b);
      await assert.rejects(
        importImage(home, await pack("td-layer.tar"), { name: "td", ...quiet }),
        /layer sha256:[0-9a-f]{64} .*content has digest/,
      );
    });
  });

  test("a missing image is an error that names it", async () => {
    await assert.rejects(loadImage(home, "no/such:image"), /no image named "no\/such:image"/);
  });
});
