#!/usr/bin/env bash
# Builds tools/cuda/kernel_timeline.cc into build-timeline/libmesa_kernel_timeline.so, with a
# copy of the CUPTI library it links (libcupti.so.13, from the CUDA toolkit or NVIDIA's CUPTI
# wheel) next to it, for the GPU machine: LD_LIBRARY_PATH=build-timeline.
set -euo pipefail
cd "$(dirname "$0")/../.."
CUDA=${CUDA_HOME:-/usr/local/cuda}
CUPTI=$(ls "$CUDA"/extras/CUPTI/lib64/libcupti.so.13 "$CUDA"/lib64/libcupti.so.13 \
  "$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)"/nvidia/cu13/lib/libcupti.so.13 \
  2>/dev/null | head -n1 || true)
[ -n "$CUPTI" ] || { echo "libcupti.so.13 not found (CUDA extras or pip install nvidia-cuda-cupti)" >&2; exit 1; }
mkdir -p build-timeline
cp -L "$CUPTI" build-timeline/libcupti.so.13
# shellcheck disable=SC2016  # a literal $ORIGIN: the linker resolves it
g++ -O2 -shared -fPIC -std=c++17 -I"$CUDA"/include -I"$CUDA"/extras/CUPTI/include \
  tools/cuda/kernel_timeline.cc -o build-timeline/libmesa_kernel_timeline.so \
  build-timeline/libcupti.so.13 -Wl,-rpath,'$ORIGIN'
ls -la build-timeline
