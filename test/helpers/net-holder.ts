/**
 * A process that sets up a run's network in a home and holds it until it is killed: what a SIGKILLed
 * `kindling run` (or test) leaves behind, without a rootfs, so the test can delete the home as a killed
 * test's temp home is deleted. Prints one JSON line once set up:
 *   node dist/test/helpers/net-holder.js HOME bridge|none [HOST_PORT] [CNI_CONF_DIR]
 * Run without arguments (as `node --test dist/test/` does with every file under test/) it does nothing.
 */
import { withConfig } from "../../src/config/index.js";
import { setUpNetwork } from "../../src/network/attach.js";
import { networkSettings } from "../../src/network/conflist.js";
import type { NetworkMode } from "../../src/network/types.js";
import { RunDir } from "../../src/runtime/rundir.js";
import { KindlingHome } from "../../src/util/home.js";
import { Scope } from "../../src/util/scope.js";

const [root, mode, hostPort, cniConfDir] = process.argv.slice(2);
if (root && mode) {
  const home = new KindlingHome(root).ensure();
  const scope = new Scope(); // never closed: the process is meant to be killed holding everything
  const runDir = await RunDir.create(home, scope, "runc", "net-holder");
  const ports = hostPort
    ? [{ hostIP: "127.0.0.1", hostPort: Number(hostPort), containerPort: 80, protocol: "tcp" as const }]
    : [];
  const net = await withConfig(cniConfDir ? { cniConfDir } : {}, () =>
    setUpNetwork({
      home,
      runId: runDir.id,
      mode: mode as NetworkMode,
      ports,
      settings: networkSettings(),
      holder: runDir,
      scope,
    }),
  );
  // the host end of the veth: the result's interface without a sandbox that is not the bridge
  const veth = net.result?.interfaces?.find((i, n) => i.sandbox === undefined && n > 0)?.name;
  process.stdout.write(`${JSON.stringify({ id: runDir.id, netns: net.netnsName, ip: net.info.ip, veth })}\n`);
  setTimeout(() => process.exit(1), 10 * 60_000); // bounded, should the test forget it
}
