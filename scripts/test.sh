#!/usr/bin/env bash
# The README's test command (and what CI runs): installs dependencies, builds, runs every test.
# MESA_TEST_LABELS (a ctest -L regex) narrows the run; MESA_SKIP_SLOW=1 skips the 'slow' label.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
BUILD_DIR="${MESA_BUILD_DIR:-build}"
# ctest runs tests in parallel; spinning OpenMP workers would steal each other's cores.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
args=(--test-dir "$BUILD_DIR" --output-on-failure --timeout 900 -j "${MESA_JOBS:-$(nproc)}")
[ -n "${MESA_TEST_LABELS:-}" ] && args+=(-L "$MESA_TEST_LABELS")
[ "${MESA_SKIP_SLOW:-0}" = "1" ] && args+=(-LE slow)
ctest "${args[@]}"
