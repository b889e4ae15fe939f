// A V8 CPU profile of a lazy daemon (docs/benchmarks.md, "Where the daemon's CPU goes"):
//   NODE_OPTIONS="--require $PWD/bench/daemon-cpu-profile.cjs" kindling run ...
// Only a process running daemon.js profiles itself (the CLI passes NODE_OPTIONS on to it); it writes
// $KINDLING_PROFILE_DIR/daemon-<pid>.cpuprofile (default /tmp) KINDLING_PROFILE_MS after its start
// (default 22000), so the run must end and the shared daemon stay up until then (it idles 30 s).
// A daemon that exits earlier (a non-shared LazyImage closed) writes it at exit instead.
// Open the file in Chrome DevTools or any .cpuprofile viewer.
const inspector = require("node:inspector");
const fs = require("node:fs");
const path = require("node:path");

if (process.argv[1]?.endsWith("daemon.js")) {
  const dir = process.env.KINDLING_PROFILE_DIR ?? "/tmp";
  const session = new inspector.Session();
  session.connect();
  session.post("Profiler.enable");
  session.post("Profiler.setSamplingInterval", { interval: 2000 });
  session.post("Profiler.start");
  let written = false;
  const write = () => {
    if (written) return;
    written = true;
    session.post("Profiler.stop", (err, r) => {
      if (!err)
        fs.writeFileSync(path.join(dir, `daemon-${process.pid}.cpuprofile`), JSON.stringify(r.profile));
    });
  };
  setTimeout(write, Number(process.env.KINDLING_PROFILE_MS ?? 22000)).unref();
  process.on("exit", write);
}
