#!/usr/bin/env bash
# Packs the GPU test and bench binaries of build-cuda/ (built here, CUDA on) with the shared
# libraries a bare CUDA machine lacks into build-gpurun/gpurun.tar.xz (about 6 MB), for
#   run(command="bash tools/cuda/gpu_run.sh", carry=["build-gpurun"])
# cuBLAS/cuBLASLt come from the GPU machine's CUDA 13.
set -euo pipefail
cd "$(dirname "$0")/../.."
nice cmake --build build-cuda -j "${MESA_JOBS:-2}" --target mesa_kernel_tests mesa_gpu_model_tests mesaserve-bench
STAGE=$(mktemp -d)
mkdir -p "$STAGE/gpurun/lib" "$STAGE/gpurun/fallback"
cp build-cuda/tests/kernels/mesa_kernel_tests build-cuda/tests/gpu_model/mesa_gpu_model_tests \
   build-cuda/tools/bench/mesaserve-bench "$STAGE/gpurun/"
strip "$STAGE"/gpurun/mesa_* "$STAGE"/gpurun/mesaserve-bench
A=/lib/x86_64-linux-gnu
cp -L $A/libabsl_*.so.20220623 $A/libblis.so.4 $A/libgomp.so.1 "$STAGE/gpurun/lib/"
cp -L $A/libstdc++.so.6 $A/libgcc_s.so.1 "$STAGE/gpurun/fallback/"
git rev-parse HEAD > "$STAGE/gpurun/git_head"
git status --short > "$STAGE/gpurun/git_status"
mkdir -p build-gpurun
tar cJf build-gpurun/gpurun.tar.xz -C "$STAGE" gpurun
rm -rf "$STAGE"
ls -la build-gpurun/gpurun.tar.xz
