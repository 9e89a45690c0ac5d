#!/usr/bin/env bash
# Packs build/cli/mesaserve with every shared library it needs except glibc's into
# build-server/server.tar.xz, so the server, its bench and its load generator run on a machine
# without our Debian packages (the GPU machine: tools/serving/isolated_benchmark.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
nice cmake --build build -j "${MESA_JOBS:-2}" --target mesaserve
STAGE=$(mktemp -d)
mkdir -p "$STAGE/mserve/lib"
cp build/cli/mesaserve "$STAGE/mserve/"
strip "$STAGE/mserve/mesaserve"
ldd build/cli/mesaserve | awk '$3 ~ /^\// {print $3}' |
  grep -v -E '/(libc|libm|libpthread|libdl|librt|ld-linux-x86-64)\.so' |
  while read -r lib; do cp -L "$lib" "$STAGE/mserve/lib/"; done
mkdir -p build-server
tar cJf build-server/server.tar.xz -C "$STAGE" mserve
rm -rf "$STAGE"
ls -la build-server/server.tar.xz
