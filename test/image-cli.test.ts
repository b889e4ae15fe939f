import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, statfs, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { exec } from "../src/util/exec.js";
import { runCli } from "./helpers/cli.js";
import { fixture, tempHome } from "./helpers/fixtures.js";

describe("kindling image (CLI)", () => {
  let home: Awaited<ReturnType<typeof tempHome>>;
  let work: string;
  const kindling = (args: string[]) => runCli(args, { home });
  before(async () => {
    home = await tempHome();
    work = await mkdtemp("/tmp/kindling-test-cli-");
  });
  after(async () => {
    await home.remove();
    await rm(work, { recursive: true, force: true });
  });

  test("import, ls, inspect --json, export, rm", async () => {
    const imp = await kindling([
      "image",
      "import",
      `${await fixture("busybox-oci")}:latest`,
      "--name",
      "busybox",
    ]);
    assert.equal(imp.code, 0, imp.stderr);
    assert.match(imp.stdout, /^busybox sha256:[0-9a-f]{64} \(oci-layout, /);
    assert.match(imp.stderr, /applying 1 layer\(s\)/, "progress on stderr");

    const ls = await kindling(["image", "ls"]);
    assert.match(ls.stdout, /^NAME +DIGEST +SIZE +ORIGIN\nbusybox +[0-9a-f]{12} /);

    const insp = await kindling(["image", "inspect", "busybox", "--json"]);
    assert.equal(insp.code, 0, insp.stderr);
    const info = JSON.parse(insp.stdout);
    assert.equal(info.name, "busybox");
    assert.match(info.digest, /^sha256:[0-9a-f]{64}$/);
    assert.equal(info.localBytes, info.blockSize);
    assert.ok(info.chunkCount >= 1);
    assert.deepEqual(info.config.entrypoint, ["/bin/busybox"]);
    assert.deepEqual(info.origin, { kind: "local" });

    const out = path.join(work, "bb.tar");
    const exp = await kindling(["image", "export", "busybox", "-o", out]);
    assert.equal(exp.code, 0, exp.stderr);
    assert.ok((await stat(out)).size > 1_000_000);

    const rmr = await kindling(["image", "rm", "busybox"]);
    assert.equal(rmr.code, 0, rmr.stderr);
    assert.deepEqual(
      (await readdir(home.blobs)).filter((n) => !n.startsWith(".")),
      [],
    );
  });

  test("concurrent import processes (same image and name) and an rm leave a consistent store", async () => {
    const oci = `${await fixture("multilayer-oci")}:v1`;
    const bb = await fixture("busybox-rootfs.tar");
    assert.equal((await kindling(["image", "import", bb, "--name", "doomed"])).code, 0);
    const results = await Promise.all([
      kindling(["image", "import", oci, "--name", "ml"]),
      kindling(["image", "import", oci, "--name", "ml"]),
      kindling(["image", "import", bb, "--name", "bb"]),
      kindling(["image", "rm", "doomed"]),
    ]);
    for (const r of results) assert.equal(r.code, 0, r.stderr);
    for (const name of ["ml", "bb"]) {
      const info = JSON.parse((await kindling(["image", "inspect", name, "--json"])).stdout);
      assert.equal(info.localBytes, info.blockSize, `${name} is whole`);
    }
    const ls = (await kindling(["image", "ls"])).stdout;
    assert.doesNotMatch(ls, /doomed/);
    await kindling(["image", "rm", "ml", "bb"]);
    assert.deepEqual(
      (await readdir(home.blobs)).filter((n) => !n.startsWith(".")),
      [],
    );
  });

  test("errors name the problem and exit 125", async () => {
    const r = await kindling(["image", "inspect", "ghost", "--json"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /no image named "ghost"/);
    const bad = await kindling(["image", "import", "/nonexistent/thing.tar", "--name", "x"]);
    assert.equal(bad.code, 125);
    assert.match(bad.stderr, /\/nonexistent\/thing\.tar: no such file or directory/);
  });

  /** stderr is exactly one "kindling: ..." line: no stack, no tool output dumped. */
  const oneLine = (stderr: string) => {
    assert.match(stderr, /^kindling: [^\n]+\n$/, `one line expected, got:\n${stderr}`);
    assert.doesNotMatch(stderr, /\n\s+at /);
  };

  describe("damaged state and wrong arguments give one-line errors", () => {
    test("a truncated catalog record: ls skips and reports it, inspect names it, rm removes it", async () => {
      const bb = await fixture("busybox-rootfs.tar");
      assert.equal((await kindling(["image", "import", bb, "--name", "bb"])).code, 0);
      assert.equal((await kindling(["image", "import", bb, "--name", "bb2"])).code, 0);
      const rec = path.join(home.images, "bb.json");
      const text = await readFile(rec, "utf8");
      await writeFile(rec, text.slice(0, Math.floor(text.length / 2)));

      const ls = await kindling(["image", "ls"]);
      assert.equal(ls.code, 0, ls.stderr);
      assert.match(ls.stdout, /^bb2 /m);
      assert.doesNotMatch(ls.stdout, /^bb /m);
      assert.match(
        ls.stderr,
        /skipped the damaged catalog record .*bb\.json \(not valid JSON \(truncated\?\)\); `kindling image rm bb` removes it/,
      );
      oneLine(ls.stderr);

      const insp = await kindling(["image", "inspect", "bb"]);
      assert.equal(insp.code, 125);
      oneLine(insp.stderr);
      assert.match(insp.stderr, /catalog record of image "bb" .* is damaged/);

      const rm1 = await kindling(["image", "rm", "bb"]);
      assert.equal(rm1.code, 0, rm1.stderr);
      assert.equal((await kindling(["image", "ls"])).stderr, "");
      // bb2 has the same digest: its chunks were kept
      const info = JSON.parse((await kindling(["image", "inspect", "bb2", "--json"])).stdout);
      assert.equal(info.localBytes, info.blockSize);
      assert.equal((await kindling(["image", "rm", "bb2"])).code, 0);
    });

    test("image mount on a regular file, export -o on a directory", async () => {
      const bb = await fixture("busybox-rootfs.tar");
      assert.equal((await kindling(["image", "import", bb, "--name", "bb"])).code, 0);
      const file = path.join(work, "plain-file");
      await writeFile(file, "x");
      const m = await kindling(["image", "mount", "bb", file]);
      assert.equal(m.code, 125);
      oneLine(m.stderr);
      assert.match(m.stderr, /mountpoint .*plain-file is not a directory/);
      const e = await kindling(["image", "export", "bb", "-o", work]);
      assert.equal(e.code, 125);
      oneLine(e.stderr);
      assert.equal((await kindling(["image", "rm", "bb"])).code, 0);
    });

    describe("a home on a full file system", () => {
      let small: string;
      const inSmall = (args: string[]) => runCli(args, { home: small });
      before(async () => {
        small = path.join(work, "small-home");
        await mkdir(small);
        await exec("mount", ["-t", "tmpfs", "-o", "size=8m", "kindling-test-home", small]);
      });
      after(async () => {
        await exec("umount", [small]);
      });

      test("mksquashfs's FATAL ERROR on a full disk becomes one line saying the disk is full", async () => {
        const filler = path.join(small, "filler");
        const free = async () => {
          const st = await statfs(small);
          return st.bavail * st.bsize;
        };
        // leave less room than the busybox block image needs (~1 MiB)
        await exec("fallocate", ["-l", String((await free()) - (256 << 10)), filler]);
        const r = await inSmall(["image", "import", await fixture("busybox-rootfs.tar"), "--name", "bb"]);
        assert.equal(r.code, 125);
        const last = r.stderr.trimEnd().split("\n").at(-1)!;
        oneLine(`${last}\n`);
        assert.match(
          last,
          /building the block image failed: no space left on the file system of .* \(mksquashfs: /,
        );
        assert.doesNotMatch(r.stderr, /FATAL ERROR: Failed/);
        await rm(filler);
      });

      test("a QEMU run whose run dir cannot be created: one line, exit 125", async () => {
        const r0 = await inSmall(["image", "import", await fixture("busybox-rootfs.tar"), "--name", "bb"]);
        assert.equal(r0.code, 0, r0.stderr);
        const filler = path.join(small, "filler");
        await writeFile(filler, "");
        // fill it up to the last block
        const st = await statfs(small);
        await exec("fallocate", ["-l", String(st.bavail * st.bsize), filler]);
        const r = await inSmall(["run", "--runtime", "qemu", "bb", "--", "/bin/true"]);
        assert.equal(r.code, 125, r.stderr);
        oneLine(r.stderr);
        assert.match(r.stderr, /no space left on device/);
      });
    });
  });

  test("inputs that are not images or not names are refused with one printable line, leaving nothing", async () => {
    const bb = await fixture("busybox-rootfs.tar");
    for (const name of ["a\nb", "/abs", "a/../b", "./bb", "..", "a//b", "Upper", "x:"]) {
      const r = await kindling(["image", "import", bb, "--name", name]);
      assert.equal(r.code, 125, name);
      oneLine(r.stderr);
      assert.match(r.stderr, /^kindling: image name .* is not valid: /);
    }
    const empty = path.join(work, "empty.tar");
    await writeFile(empty, "");
    const e = await kindling(["image", "import", empty, "--name", "e"]);
    assert.equal(e.code, 125);
    assert.match(e.stderr, /empty\.tar: the file is empty/);
    const zeros = path.join(work, "zeros.tar");
    await writeFile(zeros, Buffer.alloc(10240));
    const z = await kindling(["image", "import", zeros, "--name", "z"]);
    assert.equal(z.code, 125);
    assert.match(z.stderr, /zeros\.tar: the tar holds no files/);
    const binary = path.join(work, "binary");
    // an ELF header and every byte value: none of it may reach the terminal raw
    await writeFile(
      binary,
      Buffer.concat([
        Buffer.from("\x7fELF\x02\x01\x01\x00", "latin1"),
        Buffer.from([...Array(256).keys()]),
        Buffer.alloc(1024, 0x1b),
      ]),
    );
    const b = await kindling(["image", "import", binary, "--name", "b"]);
    assert.equal(b.code, 125);
    oneLine(b.stderr);
    assert.match(
      b.stderr,
      /binary: not a tar archive \(no valid tar header; the data starts with bytes 7f 45 4c 46 02 01 01 00\)/,
    );
    assert.match(b.stderr, /^[\x20-\x7e\n]*$/, "printable ASCII only");
    const ls = await kindling(["image", "ls", "--json"]);
    assert.deepEqual(JSON.parse(ls.stdout), []);
    // `run ./x` is a path, never a name
    const run = await kindling(["run", "--runtime", "runc", "./bb"]);
    assert.equal(run.code, 125);
    assert.match(run.stderr, /image file \.\/bb does not exist/);
  });
});
