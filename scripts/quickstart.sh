#!/usr/bin/env bash
# The README's first command: installs dependencies, builds, and generates text with the
# bundled model (or the model directory given with --model). Extra arguments go to
# `mesaserve generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh --target mesaserve
BUILD_DIR="${MESA_BUILD_DIR:-build}"
if [ "$#" -eq 0 ]; then
  set -- --prompt "The history of the" --max-new-tokens 80 --stats
fi
exec "$BUILD_DIR/cli/mesaserve" generate "$@"
