#!/usr/bin/env bash
# Packs, on this (Debian 12) machine, what tools/cuda/device_check.sh needs on a bare CUDA
# machine that has nvcc, CMake, ninja and a compiler but no Abseil, nlohmann-json, BLIS or
# GoogleTest, and no network: into build-cudakit/ (git-ignored by /build*/, about 35 MB).
#
#   bash tools/cuda/make_kit.sh            # then: run(..., carry=["build-cudakit"])
#
# Contents:
#   prefix/     Debian's Abseil 20220623 (headers, shared libraries, CMake config) and
#               nlohmann-json (headers, CMake config): relocatable, found via CMAKE_PREFIX_PATH
#   blis/       libblis.a + cblas.h (the CPU reference GEMM of kernels/cpu links it)
#   googletest/ Debian's googletest 1.12.1 source tree (-DMESA_GTEST_SOURCE_DIR)
#   runtime-libs/  libgomp.so.1 for the prebuilt binary; fallback-libs/: libstdc++, libgcc_s
#   prebuilt/   mesa_kernel_tests built here from the current sources with this very kit
#               (MESA_KERNELS_ONLY), plus sources.sha256 to tell if it is stale there
# Building the prebuilt binary here also checks that the kit's configuration works.
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=build-cudakit
BUILD=build-cudakit-build
ARCH_LIB=/usr/lib/x86_64-linux-gnu

rm -rf "$KIT"
mkdir -p "$KIT/prefix/include" "$KIT/prefix/lib/x86_64-linux-gnu/cmake" "$KIT/prefix/share/cmake" \
         "$KIT/blis/include" "$KIT/runtime-libs" "$KIT/fallback-libs" "$KIT/prebuilt"
cp -r /usr/include/absl "$KIT/prefix/include/"
cp -a "$ARCH_LIB"/libabsl_*.so* "$KIT/prefix/lib/x86_64-linux-gnu/"
cp -r "$ARCH_LIB/cmake/absl" "$KIT/prefix/lib/x86_64-linux-gnu/cmake/"
cp -r /usr/include/nlohmann "$KIT/prefix/include/"
cp -r /usr/share/cmake/nlohmann_json "$KIT/prefix/share/cmake/"
cp "$ARCH_LIB/blis-pthread/libblis.a" "$KIT/blis/"
cp /usr/include/x86_64-linux-gnu/blis-pthread/cblas.h /usr/include/x86_64-linux-gnu/blis-pthread/blis.h \
   "$KIT/blis/include/"
cp -r /usr/src/googletest "$KIT/googletest"
cp -L "$ARCH_LIB/libgomp.so.1" "$KIT/runtime-libs/"
cp -L "$ARCH_LIB/libstdc++.so.6" "$ARCH_LIB/libgcc_s.so.1" "$KIT/fallback-libs/"

# The prebuilt test binary, configured exactly as device_check.sh configures (kit paths).
while [ -e /tmp/mesa-quiet ]; do sleep 10; done
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}" CCACHE_BASEDIR="$PWD"
K="$PWD/$KIT"
nice cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DMESA_KERNELS_ONLY=ON -DMESA_WITH_SERVER=OFF -DMESA_WITH_CUDA=ON -DMESA_BUILD_TESTS=ON \
  -DMESA_GTEST_SOURCE_DIR="$K/googletest" -DCMAKE_PREFIX_PATH="$K/prefix" \
  -DBLAS_LIBRARIES="$K/blis/libblis.a" -DCBLAS_INCLUDE_DIR="$K/blis/include" \
  -DCMAKE_CXX_FLAGS="-include cstdint" -DCMAKE_CUDA_FLAGS="-include cstdint" >/dev/null
grep -E "^absl_DIR|^nlohmann_json_DIR" "$BUILD/CMakeCache.txt"
nice cmake --build "$BUILD" -j "${MESA_JOBS:-2}" --target mesa_kernel_tests
cp "$BUILD/tests/kernels/mesa_kernel_tests" "$KIT/prebuilt/"
bash tools/cuda/source_hash.sh > "$KIT/prebuilt/sources.sha256"
git rev-parse HEAD > "$KIT/prebuilt/git_head" 2>/dev/null || true
# It must at least start and list its tests here (no GPU: the device tests skip).
"$KIT/prebuilt/mesa_kernel_tests" --gtest_brief=1 | tail -n 3
du -sh "$KIT"
