/**
 * `-t` under runc and runsc, through the real service: `kindling run -t [-i]` and `exec -i -t` driven
 * on a real terminal (util-linux `script`, test/helpers/terminal.ts). The process sees a pty (`tty`
 * names one, `stty size` the size we had), a resize of our terminal reaches it, its status is ours,
 * our terminal leaves raw mode on every way out (the end, Ctrl-C, an error), and nothing is left.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { KINDLING } from "./helpers/cli.js";
import { cli } from "./helpers/service.js";
import { busyboxServiceHome, type ServiceTestHome } from "./helpers/service-home.js";
import { ScriptTerminal, SHOW_TERMINAL_MODE, shellSession, terminalRestored } from "./helpers/terminal.js";

let t: ServiceTestHome;
let home: string;
let image: string;
let ids: string[];
const RUNTIMES = ["runc", "runsc"] as const;
/** What `tty` prints: runc gives the process a pty of the container's devpts; gVisor a host one it cannot name. */
const TTY_NAME = { runc: /\/dev\/pts\/\d+/, runsc: /\/dev\/pts\/\d+|not a tty/ };

before(async () => {
  t = await busyboxServiceHome("kindling-tty-");
  ({ root: home, image, ids } = t);
});

after(() => t?.done());

const env = () => t.env();

for (const runtime of RUNTIMES) {
  test(`${runtime}: run -t -i: a shell on a pty of our size, resized, its status ours, the terminal restored`, async () => {
    await shellSession(
      [KINDLING, "run", "-t", "-i", "--runtime", runtime, "--network", "none", image, "--", "sh"],
      env(),
      {
        prompt: /\/ # /,
        ttyName: TTY_NAME[runtime],
        size: [33, 101],
        resizeTo: [40, 120],
        exitCode: 5,
        what: "run -t -i",
      },
    );
  });

  test(`${runtime}: run -t without -i: output of a pty, no raw mode; Ctrl-C in -it reaches the process`, async () => {
    const plain = ScriptTerminal.start(
      [
        KINDLING,
        "run",
        "-t",
        "--runtime",
        runtime,
        "--network",
        "none",
        image,
        "--",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && test -t 2 && echo all-ttys; echo out; echo err >&2; exit 3",
      ],
      { rows: 24, cols: 80, env: env() },
    );
    try {
      await plain.expect(/all-ttys\r*\nout\r*\nerr\r*\n/, "stdout and stderr through the pty");
      assert.equal(await plain.exited(60_000, "run -t"), 3);
    } finally {
      plain.kill();
    }
    // -it: Ctrl-C is a byte for the container's terminal, which makes it SIGINT for its foreground job
    // (sleep, not sh: sh is PID 1 there, which a SIGINT without a handler does not reach)
    const t = ScriptTerminal.start(
      [
        KINDLING,
        "run",
        "-t",
        "-i",
        "--runtime",
        runtime,
        "--network",
        "none",
        image,
        "--",
        "sh",
        "-c",
        "echo ready; sleep 60; exit $?",
      ],
      { rows: 24, cols: 80, env: env(), afterwards: SHOW_TERMINAL_MODE },
    );
    try {
      await t.expect(/ready/, "the process started");
      t.type("\x03");
      assert.equal(await t.exited(60_000, "run -t -i after Ctrl-C"), 130);
      await terminalRestored(t);
    } finally {
      t.kill();
    }
  });
}

for (const runtime of RUNTIMES) {
  test(`${runtime}: exec -i -t into a running run -d -t container: a pty, its size, a resize, the status`, async () => {
    const run = await cli(home, [
      "run",
      "-d",
      "-t",
      "--runtime",
      runtime,
      "--network",
      "none",
      image,
      "--",
      "sh",
      "-c",
      "test -t 1 && echo detached-on-a-tty; sleep 300",
    ]);
    assert.equal(run.code, 0, run.stderr);
    const id = run.stdout.trim();
    ids.push(id);
    await shellSession([KINDLING, "exec", "-i", "-t", id, "--", "sh"], env(), {
      prompt: /\/ # /,
      ttyName: TTY_NAME[runtime],
      size: [30, 90],
      resizeTo: [50, 132],
      exitCode: 4,
      what: "exec -i -t",
    });
    assert.match((await cli(home, ["logs", id])).stdout, /detached-on-a-tty\r\n/);
    // kill of a -t container: its pty and runtime go (after() checks nothing is left)
    assert.equal((await cli(home, ["rm", "-f", id])).code, 0);
  });
}

test("runc: a client that goes away (SIGKILL) stops its -t run; exec -it into no container restores the terminal", async () => {
  const t = ScriptTerminal.start(
    [
      KINDLING,
      "run",
      "-t",
      "-i",
      "--name",
      "gone",
      "--stop-timeout",
      "1",
      "--runtime",
      "runc",
      "--network",
      "none",
      image,
      "--",
      "sh",
      "-c",
      "echo ready; sleep 300",
    ],
    { rows: 24, cols: 80, env: env() },
  );
  try {
    await t.expect(/ready/, "the process started");
    process.kill(await t.commandPid(), "SIGKILL");
    const deadline = Date.now() + 60_000;
    for (;;) {
      const ps = JSON.parse((await cli(home, ["ps", "-a", "--json"])).stdout) as {
        name: string;
        status: string;
      }[];
      if (ps.find((c) => c.name === "gone")?.status === "exited") break;
      if (Date.now() > deadline)
        assert.fail(`the -t run of a killed client still runs: ${JSON.stringify(ps)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    t.kill();
  }
  assert.equal((await cli(home, ["rm", "gone"])).code, 0);
  // an error after raw mode was set (no such container) still restores the terminal
  const bad = ScriptTerminal.start([KINDLING, "exec", "-i", "-t", "nosuchcontainer", "--", "sh"], {
    rows: 30,
    cols: 90,
    env: env(),
    afterwards: SHOW_TERMINAL_MODE,
  });
  try {
    assert.equal(await bad.exited(60_000, "exec -it into no container"), 125);
    await terminalRestored(bad);
    assert.match(bad.output, /no container|not found|nosuchcontainer/i);
  } finally {
    bad.kill();
  }
});
