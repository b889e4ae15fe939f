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
import { ScriptTerminal } from "./helpers/terminal.js";

let t: ServiceTestHome;
let home: string;

before(async () => {
  t = await vmServiceHome();
  home = t.root;
});

after(() => t?.done());

const env = () => t.env();
const AFTER = "echo; stty -a | tr ' ' '\\n' | grep -E '^-?(icanon|echo)$' | tr '\\n' ' '; echo END";

/** Types `stty size` until the answer is `want` (the resize travels client -> guest), bounded. */
async function untilSize(term: ScriptTerminal, want: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const at = term.output.length;
    term.type("stty size\r");
    const seen = await term.expect(/\d+ \d+\r*\n/, "stty size after the resize", at, 20_000);
    if (seen[0].startsWith(want)) return;
    if (Date.now() > deadline) assert.fail(`no resize to ${want} seen:\n${term.output}`);
  }
}

test("qemu: run -t -i: a shell on a guest pty of our size, resized, its status ours, the terminal restored", async () => {
  const term = ScriptTerminal.start(
    [KINDLING, "run", "-t", "-i", "--runtime", "qemu", "--network", "none", "ml", "--", "sh"],
    { rows: 33, cols: 101, env: env(), afterwards: AFTER },
  );
  try {
    await term.expect(/# /, "the shell's prompt", 0, 180_000);
    const mark = term.output.length;
    term.type("tty; stty size\r");
    await term.expect(/\/dev\/pts\/\d+\r*\n33 101/, "tty and stty size", mark);
    await term.resize(40, 120);
    await untilSize(term, "40 120");
    term.type("exit 5\r");
    assert.equal(await term.exited(120_000, "run -t -i"), 5);
    await term.expect(/icanon echo END/, "the terminal restored");
  } finally {
    term.kill();
  }
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
    const term = ScriptTerminal.start([KINDLING, "exec", "-i", "-t", id, "--", "sh"], {
      rows: 30,
      cols: 90,
      env: env(),
      afterwards: AFTER,
    });
    try {
      await term.expect(/# /, "the exec'd shell's prompt", 0, 120_000);
      const mark = term.output.length;
      term.type("tty; stty size\r");
      await term.expect(/\/dev\/pts\/\d+\r*\n30 90/, "tty and stty size", mark);
      await term.resize(50, 132);
      await untilSize(term, "50 132");
      term.type("exit 4\r");
      assert.equal(await term.exited(120_000, "exec -i -t"), 4);
      await term.expect(/icanon echo END/, "the terminal restored");
    } finally {
      term.kill();
    }
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
