# shellcheck shell=bash
# Sourced by the GPU serving checks (gpu_*_check.sh) on the GPU machine: unpacks the server that
# tools/serving/pack_server.sh packed (build-server/server.tar.xz) and sets LD_LIBRARY_PATH to its
# libraries and the machine's cuBLAS 13, and BIN to the binary; defines wait_serving.
tar xJf build-server/server.tar.xz -C /tmp
CUDA_LIB=$(dirname "$(ls /usr/local/cuda/lib64/libcublasLt.so.13* 2>/dev/null | head -n1)")
export LD_LIBRARY_PATH=/tmp/mserve/lib:${CUDA_LIB:-/usr/local/cuda/lib64}
BIN=/tmp/mserve/mesaserve

# wait_serving ADDRESS SECONDS: polls `mesaserve health` until the server answers SERVING or the
# seconds pass.
wait_serving() {
  local deadline=$((SECONDS + $2))
  until "$BIN" health --address "$1" >/dev/null 2>&1; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.2
  done
}
