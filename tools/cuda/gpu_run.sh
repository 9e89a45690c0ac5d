#!/usr/bin/env bash
# On the GPU machine: unpacks build-gpurun/gpurun.tar.xz (tools/cuda/pack_gpurun.sh) and runs
# what GPU_RUN names (default: "tests bench"; "all" = "bench model", the whole benchmark of
# docs/benchmarks.md: both shapes at kernel level and both models whole, each next to fla):
#   tests  mesa_kernel_tests and mesa_gpu_model_tests (gtest XML + logs)
#   bench  mesaserve-bench kernels at the 1.3B reference shape (16 x 128) and the bundled model's
#          (6 x 64), then fla's decode kernel at the same shapes when fla's wheels are in .whl/
#   model  mesaserve-bench model: whole-model decode steps, random 1.3B and the bundled model
#   prefill  one layer's chunked prefill (mesaserve-bench kernels, T = 2048 and 8192) and the whole
#          random 1.3B's 2048-token prefill with segments of 512 and 2048 tokens; fla's chunk
#          kernel and fla + HF's whole-model prefill at the same shapes when fla's wheels are in .whl/
#   packed several prompts in one prefill launch against one launch each: one layer (2048 tokens
#          as 1, 4, 16, 32 sequences) and the whole random 1.3B (2048 tokens as 8, 16, 32 prompts)
# Logs come back in $OUT/gpu_run.tar.gz; summaries on stdout.
set -u
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
W=/tmp/gpu_run; rm -rf "$W"; mkdir -p "$W"
tar xJf build-gpurun/gpurun.tar.xz -C /tmp
CUBLAS_DIR=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib; do
  ls "$d"/libcublasLt.so.13* >/dev/null 2>&1 && { CUBLAS_DIR=$d; break; }
done
[ -z "$CUBLAS_DIR" ] && CUBLAS_DIR=$(dirname "$(find / -xdev -name 'libcublasLt.so.13*' 2>/dev/null | head -n1)")
L=/tmp/gpurun/lib:$CUBLAS_DIR
LD_LIBRARY_PATH=$L ldd /tmp/gpurun/mesa_kernel_tests | grep -q "not found" && L=$L:/tmp/gpurun/fallback
export LD_LIBRARY_PATH=$L
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
STEPS=${GPU_RUN:-tests bench}
[ "$STEPS" = all ] && STEPS="bench model"
for step in $STEPS; do
  case $step in
    tests)
      for t in mesa_kernel_tests mesa_gpu_model_tests; do
        timeout 240 /tmp/gpurun/$t --gtest_output=xml:$W/$t.xml > $W/$t.log 2>&1
        echo "$t rc=$?"
        grep -E "^\[  (FAILED|PASSED|SKIPPED) " $W/$t.log | head -20
        grep -B3 -A6 ": Failure$" $W/$t.log | head -40
      done ;;
    bench)
      for shape in "16 128" "6 64"; do
        set -- $shape
        timeout 120 /tmp/gpurun/mesaserve-bench kernels --heads $1 --head-dim $2 2>&1 | tee -a $W/bench.md
      done
      if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
        for shape in "16 128" "6 64"; do
          set -- $shape
          PYTHONPATH=/tmp/site timeout 180 python3 tools/bench/fla_decode_bench.py --heads $1 --head-dim $2 2>&1 |
            grep -v Warning | tee -a $W/bench.md
        done
      fi ;;
    prefill)
      timeout 120 /tmp/gpurun/mesaserve-bench kernels --batches 1 --reps 20 2>&1 | tee -a $W/prefill.md
      for seg in 512 2048; do
        timeout 150 /tmp/gpurun/mesaserve-bench model --random-1.3b --batches 1 --steps 5 --prefill-segment $seg 2>&1 |
          grep -E "^#|prefill" | tee -a $W/prefill.md
      done
      if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
        PYTHONPATH=/tmp/site timeout 240 python3 tools/bench/fla_decode_bench.py --batches 1 --reps 20 2>&1 |
          grep -v Warning | tee -a $W/prefill.md
        PYTHONPATH=/tmp/site timeout 240 python3 tools/bench/fla_model_bench.py --batches 1 --steps 3 2>&1 |
          grep -v Warn | tee -a $W/prefill.md
      fi ;;
    packed)
      timeout 150 /tmp/gpurun/mesaserve-bench kernels --batches 1 --reps 20 --prefill 2048 --prefill-seqs 1,4,16,32 2>&1 |
        tee -a $W/packed.md
      for seqs in 8 16 32; do
        timeout 150 /tmp/gpurun/mesaserve-bench model --random-1.3b --batches 1 --steps 2 --prefill 2048 --prefill-seqs $seqs 2>&1 |
          grep -E "^#|prefill" | tee -a $W/packed.md
      done ;;
    model)
      timeout 200 /tmp/gpurun/mesaserve-bench model --random-1.3b 2>&1 | tee -a $W/model_bench.md
      timeout 200 /tmp/gpurun/mesaserve-bench model --random-1.3b --eager --batches 1,8 2>&1 | tee -a $W/model_bench.md
      timeout 100 /tmp/gpurun/mesaserve-bench model --model models/mesanet-tiny-en 2>&1 | tee -a $W/model_bench.md
      if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
        PYTHONPATH=/tmp/site timeout 240 python3 tools/bench/fla_model_bench.py 2>&1 | grep -v Warn | tee -a $W/model_bench.md
        PYTHONPATH=/tmp/site timeout 120 python3 tools/bench/fla_model_bench.py --model models/mesanet-tiny-en 2>&1 |
          grep -v Warn | tee -a $W/model_bench.md
      fi ;;
  esac
done
tar czf "$OUTDIR/gpu_run.tar.gz" -C /tmp gpu_run
