import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import {
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { exportImage } from "../src/image/export.js";
import { importImage } from "../src/image/import.js";
import { exec } from "../src/util/exec.js";
import { within } from "./helpers/bounded.js";
import { runCli } from "./helpers/cli.js";
import { fixture, REPO, tempHome } from "./helpers/fixtures.js";

const quiet = { progress: false };

describe("image export", () => {
  let home: Awaited<ReturnType<typeof tempHome>>;
  let work: string;
  before(async () => {
    home = await tempHome();
    work = await mkdtemp("/tmp/kindling-test-export-");
  });
  after(async () => {
    await home.remove();
    await rm(work, { recursive: true, force: true });
  });

  test("export then import of the flattened tar gives the same image (owners, modes, links, xattrs kept)", async () => {
    const orig = await importImage(home, `${await fixture("multilayer-oci")}:v1`, { name: "ml", ...quiet });
    const out = path.join(work, "ml.tar");
    await exportImage(home, "ml", out, false);
    const listing = (await exec("tar", ["-tvf", out, "--numeric-owner"])).stdout;
    assert.match(listing, /-rwsr-xr-x 0\/0 .* \.\/bin\/su/);
    assert.match(listing, /crw-rw-rw- 0\/0 +1,3 .* \.\/dev\/null/);
    assert.match(listing, /\.\/data\/hl link to|\.\/data\/orig link to/);
    assert.match(listing, /drwxr-x--- 1000\/1000 .* \.\/home\/user\//);
    const again = await importImage(home, out, { name: "ml-again", ...quiet });
    assert.equal(again.format, "rootfs-tar");
    // A byte-identical block image: the tree survived the round trip exactly (incl. xattrs, mtimes).
    assert.equal(again.digest, orig.digest);
  });

  test("export of a missing image names it", async () => {
    await assert.rejects(exportImage(home, "nope", path.join(work, "x.tar"), false), /no image named "nope"/);
  });

  describe("-o writes where tar -f would", () => {
    const isTar = (b: Buffer) => b.length > 1024 && b.subarray(257, 262).toString() === "ustar";
    before(async () => {
      await importImage(home, `${await fixture("busybox-oci")}:latest`, { name: "bb", ...quiet });
    });

    test("through a symlink: the link stays, its target gets the tar", async () => {
      const target = path.join(work, "real.tar");
      const link = path.join(work, "link.tar");
      await writeFile(target, "old");
      await symlink("real.tar", link);
      await exportImage(home, "bb", link, false);
      assert.ok((await lstat(link)).isSymbolicLink());
      assert.equal(await readlink(link), "real.tar");
      assert.ok(isTar(await readFile(target)));
    });

    test("into a character device: it stays a device (a private null device made with mknod)", async () => {
      const nul = path.join(work, "null");
      await exec("mknod", ["-m", "666", nul, "c", "1", "3"]);
      await exportImage(home, "bb", nul, false);
      const st = await stat(nul);
      assert.ok(st.isCharacterDevice(), "still a character device");
      assert.equal(st.rdev, (1 << 8) | 3);
    });

    test("into a full device: fails with one line naming the write error (a private full device)", async () => {
      const full = path.join(work, "full");
      await exec("mknod", ["-m", "666", full, "c", "1", "7"]);
      await assert.rejects(exportImage(home, "bb", full, false), (err: Error) => {
        assert.match(err.message, /^-o .*\/full: cannot write: No space left on device$/);
        return true;
      });
      assert.ok((await stat(full)).isCharacterDevice());
    });

    test("into a FIFO: a reader gets the tar", async () => {
      const fifo = path.join(work, "fifo");
      await exec("mkfifo", [fifo]);
      const reader = spawn("cat", [fifo], { stdio: ["ignore", "pipe", "inherit"] });
      const got: Buffer[] = [];
      reader.stdout.on("data", (d: Buffer) => got.push(d));
      const closed = new Promise((r) => reader.on("close", r));
      try {
        await exportImage(home, "bb", fifo, false);
        // Bounded: if nothing was written into the FIFO, cat would wait for a writer forever.
        const timer = setTimeout(() => reader.kill(), 10_000);
        await closed;
        clearTimeout(timer);
      } finally {
        reader.kill();
      }
      assert.ok(isTar(Buffer.concat(got)));
      assert.ok((await lstat(fifo)).isFIFO());
    });

    test("a regular file on a full filesystem: an error, the old file intact, no temp file left", async () => {
      const mnt = path.join(work, "tiny");
      await mkdir(mnt);
      await exec("mount", ["-t", "tmpfs", "-o", "size=256k", "kindling-test", mnt]);
      try {
        const out = path.join(mnt, "bb.tar");
        await writeFile(out, "previous export");
        await assert.rejects(exportImage(home, "bb", out, false), /cannot write: No space left on device/);
        assert.equal(await readFile(out, "utf8"), "previous export");
        assert.deepEqual(await readdir(mnt), ["bb.tar"]);
      } finally {
        await exec("umount", [mnt]);
      }
    });

    test("a directory: a clear error before any work", async () => {
      await assert.rejects(exportImage(home, "bb", work, false), /-o .*: is a directory \(name a file/);
    });

    test("the CLI: `-o -` writes the tar to stdout; `-o DIR` exits 125 with one line", async () => {
      const bin = path.join(REPO, "bin", "kindling");
      const env = { ...process.env, KINDLING_HOME: home.root };
      // Bytes, not text: runCli decodes stdout.
      const child = spawn(process.execPath, [bin, "image", "export", "bb", "-o", "-"], { env });
      const out: Buffer[] = [];
      child.stdout.on("data", (d: Buffer) => out.push(d));
      const code = await within(new Promise((r) => child.on("close", r)), 120_000, "image export -o -");
      assert.equal(code, 0);
      assert.ok(isTar(Buffer.concat(out)));
      const dir = await runCli(["image", "export", "bb", "-o", work], { home });
      assert.equal(dir.code, 125);
      assert.match(dir.stderr, /^kindling: -o .*: is a directory \(name a file, e\.g\. .*\)\n$/);
    });
  });
});
