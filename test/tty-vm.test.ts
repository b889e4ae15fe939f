/**
 * `-t` in QEMU microVMs (TCG here), through the real service: the guest agent opens a pty in the guest's
 * devpts. `kindling run -t -i` and `exec -i -t` on a real terminal (util-linux `script`): `tty` names
 * /dev/pts/N, `stty size` is the size we had, a resize of our terminal reaches the process, the status
 * is carried, our terminal is restored, and nothing is left.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { KINDLING } from "./helpers/cli.js";
import { cli } from "./helpers/service.js";
import { type ServiceTestHome, vmServiceHome } from "./helpers/service-home.js";
import { ScriptTerminal, shellSession } from "./helpers/terminal.js";

let t: ServiceTestHome;
let home: string;

before(async () => {
  t = await vmServiceHome();
  home = t.root;
});

after(() => t?.done());

const env = () => t.env();

test("qemu: run -t -i: a shell on a guest pty of our size, resized, its status ours, the terminal restored", async () => {
  await shellSession(
    [KINDLING, "run", "-t", "-i", "--runtime", "qemu", "--network", "none", "ml", "--", "sh"],
    env(),
    {
      prompt: /# /,
      promptMs: 180_000,
      ttyName: /\/dev\/pts\/\d+/,
      size: [33, 101],
      resizeTo: [40, 120],
      exitCode: 5,
      exitMs: 120_000,
      what: "run -t -i",
    },
  );
});

test("qemu: exec -i -t into a running VM: a pty, its size, a resize, the status; run -d -t logs a pty's output", async () => {
  const run = await cli(home, [
    "run",
    "-d",
    "-t",
    "--runtime",
    "qemu",
    "--network",
    "none",
    "ml",
    "--",
    "sh",
    "-c",
    "tty; stty size; echo err >&2; sleep 300",
  ]);
  assert.equal(run.code, 0, run.stderr);
  const id = run.stdout.trim();
  try {
    await shellSession([KINDLING, "exec", "-i", "-t", id, "--", "sh"], env(), {
      prompt: /# /,
      promptMs: 120_000,
      ttyName: /\/dev\/pts\/\d+/,
      size: [30, 90],
      resizeTo: [50, 132],
      exitCode: 4,
      exitMs: 120_000,
      what: "exec -i -t",
    });
    // run -d -t: the container's pty (24x80, no client terminal), stdout and stderr in one stream
    const logs = await cli(home, ["logs", id]);
    assert.match(logs.stdout, /\/dev\/pts\/\d+\r\n24 80\r\nerr\r\n/);
    assert.equal(logs.stderr, "");
  } finally {
    await cli(home, ["rm", "-f", id]);
  }
});

test("qemu --agent vsock (a booted VM, no snapshot): run -t gives the process a guest pty of our size", async () => {
  const term = ScriptTerminal.start(
    [
      KINDLING,
      "run",
      "-t",
      "--runtime",
      "qemu",
      "--agent",
      "vsock",
      "--network",
      "none",
      "ml",
      "--",
      "sh",
      "-c",
      "tty; stty size; exit 6",
    ],
    { rows: 27, cols: 99, env: { ...env(), KINDLING_VM_SNAPSHOTS: "0" } },
  );
  try {
    assert.equal(await term.exited(240_000, "run -t --agent vsock"), 6);
    assert.match(term.output, /\/dev\/pts\/\d+\r*\n27 99\r*\n/);
  } finally {
    term.kill();
  }
});
