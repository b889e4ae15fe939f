/** The host side of hybrid vsock against plain Unix sockets: the handshake's edge cases. */
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtemp, rm, stat } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { guestListenerPath, VsockListener, vsockConnectOnce } from "../src/vm/firecracker/vsock.js";
import { within } from "./helpers/bounded.js";

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "kvs-"));
});
after(() => rm(dir, { recursive: true, force: true }));

/** A stand-in for Firecracker's muxer that answers each CONNECT line with `reply`. */
async function muxer(
  name: string,
  reply: (line: string) => string | undefined,
): Promise<{ uds: string; close(): void }> {
  const uds = path.join(dir, name);
  const server = net.createServer((s) => {
    let buf = "";
    s.on("data", (d) => {
      buf += d.toString();
      const nl = buf.indexOf("\n");
      if (nl < 0) return;
      const answer = reply(buf.slice(0, nl));
      if (answer === undefined) s.destroy();
      else s.write(answer);
    });
    s.on("error", () => {});
  });
  server.listen(uds);
  await once(server, "listening");
  return { uds, close: () => server.close() };
}

test("bytes the guest sends in the same packet as OK belong to the stream", async () => {
  const m = await muxer("a.sock", (line) => (line === "CONNECT 52" ? "OK 1073741824\nhello" : undefined));
  try {
    const s = await vsockConnectOnce(m.uds, 52, 2000);
    const [chunk] = (await within(once(s, "data"), 10_000, "data from the host")) as [Buffer];
    assert.equal(chunk.toString(), "hello");
    s.destroy();
  } finally {
    m.close();
  }
});

test("a reply that is not OK <n> is an error naming it; a close is an error too", async () => {
  const bad = await muxer("b.sock", () => "NOPE\n");
  const closed = await muxer("c.sock", () => undefined);
  try {
    await assert.rejects(vsockConnectOnce(bad.uds, 7, 2000), /CONNECT 7 via .*unexpected reply "NOPE"/);
    await assert.rejects(vsockConnectOnce(closed.uds, 7, 2000), /closed without a reply/);
    await assert.rejects(vsockConnectOnce(path.join(dir, "none.sock"), 7, 2000), /ENOENT/);
  } finally {
    bad.close();
    closed.close();
  }
});

test("the guest-initiated listener lives at <uds>_<port>, queues early connections, and close() removes it", async () => {
  const uds = path.join(dir, "v.sock");
  const l = await VsockListener.listen(uds, 1024);
  assert.equal(l.path, guestListenerPath(uds, 1024));
  assert.equal(l.path, `${uds}_1024`);
  // The guest may connect before anyone calls accept(): nothing it sends is lost.
  const guest = net.connect(l.path);
  await within(once(guest, "connect"), 10_000, "the guest-side connect");
  guest.write("READY");
  await new Promise((r) => setTimeout(r, 50));
  const host = await l.accept();
  const [chunk] = (await within(once(host, "data"), 10_000, "data from the guest")) as [Buffer];
  assert.equal(chunk.toString(), "READY");
  const ac = new AbortController();
  const waiting = l.accept(ac.signal);
  ac.abort(new Error("gave up"));
  await assert.rejects(waiting, /gave up/);
  guest.destroy();
  host.destroy();
  await l.close();
  await assert.rejects(stat(l.path), /ENOENT/);
});
