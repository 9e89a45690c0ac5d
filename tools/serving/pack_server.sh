#!/usr/bin/env bash
# Packs BUILD_DIR/cli/mesaserve (default build/; build-cuda/ for the CUDA backend) with every
# shared library it needs except glibc's and CUDA's into build-server/server.tar.xz, so the
# server, its bench and its load generator run on a machine without our Debian packages (the
# GPU machine: tools/serving/isolated_benchmark.sh, tools/serving/gpu_serve_check.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BUILD_DIR:-build}
nice cmake --build "$B" -j "${MESA_JOBS:-2}" --target mesaserve
STAGE=$(mktemp -d)
mkdir -p "$STAGE/mserve/lib"
cp "$B/cli/mesaserve" "$STAGE/mserve/"
strip "$STAGE/mserve/mesaserve"
ldd "$B/cli/mesaserve" | awk '$3 ~ /^\// {print $3}' |
  grep -v -E '/(libc|libm|libpthread|libdl|librt|ld-linux-x86-64|libcublas|libcublasLt|libcudart)\.so' |
  while read -r lib; do cp -L "$lib" "$STAGE/mserve/lib/"; done
mkdir -p build-server
tar cJf build-server/server.tar.xz -C "$STAGE" mserve
rm -rf "$STAGE"
ls -la build-server/server.tar.xz
