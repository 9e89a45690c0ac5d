#!/usr/bin/env bash
# Configures and builds mesaserve (Release, ccache) into ${MESA_BUILD_DIR:-build}.
# Extra arguments are passed to `cmake --build` (e.g. --target mesaserve).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${MESA_BUILD_DIR:-build}"
JOBS="${MESA_JOBS:-$(nproc)}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
# Absolute paths under the checkout are rewritten, so clones in other folders share the cache.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${MESA_CMAKE_ARGS:-} >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$JOBS" "$@"
