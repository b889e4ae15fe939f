#!/usr/bin/env bash
# The main job: set up, build a Debian minbase image, push it to a registry on 127.0.0.1, pull it lazily
# into a fresh worker (index only, no chunks), and run a container from it in a microVM whose root
# drive is the lazily loaded block image. Prints how much of the image the run actually fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fixtures/debian-minbase.sh .cache/fixtures minbase-only

kindling() { node bin/kindling "$@"; }
work=$(mktemp -d /tmp/kindling-demo.XXXXXX)
registry_pid=""
ref=""
cleanup() {
  set +e # a failing step must not skip the rest of the cleanup
  # The image's lazy daemon stays after a run for the next one; `image rm` stops it at once.
  if [ -n "$ref" ]; then KINDLING_HOME="$work/worker-b" kindling image rm "$ref" >/dev/null 2>&1; fi
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null; wait "$registry_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A real OCI registry on 127.0.0.1 (Debian's docker-registry).
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
cat >"$work/registry.yml" <<YML
version: 0.1
storage: { filesystem: { rootdirectory: $work/registry }, delete: { enabled: true } }
http: { addr: 127.0.0.1:$port }
log: { level: error }
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

echo "== worker A: import the image the project builds (Debian minbase rootfs tar) and push it as chunks"
export KINDLING_HOME="$work/worker-a"
kindling image import .cache/fixtures/debian-minbase.tar --name demo
ref="127.0.0.1:$port/kindling/demo:latest"
kindling image push demo "$ref" --insecure

echo "== worker B: pull lazily (index only), then run in a microVM (the default runtime: Firecracker where usable, else QEMU)"
export KINDLING_HOME="$work/worker-b"
kindling image pull "$ref" --insecure
kindling run "$ref" -- \
  sh -c '. /etc/os-release; echo "hello from $PRETTY_NAME on kernel $(uname -r) in a microVM"; echo "$(ls /usr/bin | wc -l) programs in /usr/bin"'
kindling image inspect "$ref" --json |
  node -e 'const i=JSON.parse(require("fs").readFileSync(0));console.log(`fetched ${i.localBytes} of ${i.blockSize} bytes of the block image (${(100*i.localBytes/i.blockSize).toFixed(1)}%)`)'
