#!/usr/bin/env bash
# The README's first command: installs dependencies, builds, and starts the server on the
# bundled model (or the model directory given with --model). Extra arguments go to
# `mesaserve serve` (see `build/cli/mesaserve serve --help`). Stop it with Ctrl-C (it drains).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh --target mesaserve
BUILD_DIR="${MESA_BUILD_DIR:-build}"
exec "$BUILD_DIR/cli/mesaserve" serve "$@"
