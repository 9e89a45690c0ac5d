# Sourced by the GPU serving checks (gpu_*_check.sh) on the GPU machine: unpacks the server that
# tools/serving/pack_server.sh packed (build-server/server.tar.xz) and sets LD_LIBRARY_PATH to its
# libraries and the machine's cuBLAS 13, and BIN to the binary.
tar xJf build-server/server.tar.xz -C /tmp
CUDA_LIB=$(dirname "$(ls /usr/local/cuda/lib64/libcublasLt.so.13* 2>/dev/null | head -n1)")
export LD_LIBRARY_PATH=/tmp/mserve/lib:${CUDA_LIB:-/usr/local/cuda/lib64}
BIN=/tmp/mserve/mesaserve
