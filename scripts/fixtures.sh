#!/usr/bin/env bash
# Builds the test images offline (cached under .cache/fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache/fixtures
for script in scripts/fixtures/*.sh; do
  [ -e "$script" ] || continue
  bash "$script" .cache/fixtures
done
