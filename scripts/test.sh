#!/usr/bin/env bash
# Sets up everything (packages, build, test fixtures) and runs the checks and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fixtures.sh
echo "== type check and lint" >&2
npx tsc -p tsconfig.json --noEmit
npx biome check src test bench
echo "== tests" >&2
# One file at a time: tests share loop devices, QEMU and 2 cores.
node --test --test-concurrency=1 --test-timeout=600000 dist/test/
