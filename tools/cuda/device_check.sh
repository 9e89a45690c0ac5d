#!/usr/bin/env bash
# The CUDA backend's check on a GPU machine, in ONE call (docs/cuda-backend.md):
#   here:  bash tools/cuda/make_kit.sh                  (once per source change; ~35 MB kit)
#   there: run(command="bash tools/cuda/device_check.sh", carry=["build-cudakit"], timeout_s=600)
#
# Steps, each bounded in time, each reported even when another fails:
#   1. the machine: GPU, driver, nvcc, CMake, compiler, glibc
#   2. the carried prebuilt mesa_kernel_tests (built by make_kit.sh here): runs in seconds and
#      needs nothing but the driver and cuBLAS there
#   3. a fresh build there: MESA_KERNELS_ONLY (CUDA on, server off, tests on) against the kit's
#      Abseil/nlohmann-json/BLIS/googletest, then the same tests (MESA_DEVICE_BUILD=0 skips)
#   4. compute-sanitizer memcheck and racecheck over a few small cases of the built (or
#      prebuilt) binary (MESA_SANITIZE=0 skips)
# Output: a compact summary at the end. Logs and gtest XML go to /tmp/mesa-device-check; when
# $OUT is set (the device tool) they come back as $OUT/summary.txt and $OUT/device_check.tar.gz
# (the tool returns at most 8 files).
# Exit status 0 when a run of the whole suite passed with no test skipped.
# The whole script keeps within MESA_CHECK_BUDGET seconds (default 540, under the device
# tool's 600 s per command): each step's timeout is cut to what is left, later steps skip.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
START=$(date +%s)
BUDGET=${MESA_CHECK_BUDGET:-540}
# Seconds for a step: min($1, what is left of the budget minus 10 s for the summary).
limit() {
  local left=$(( BUDGET - ($(date +%s) - START) - 10 ))
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
OUTDIR=/tmp/mesa-device-check
KIT=${MESA_CUDA_KIT:-$ROOT/build-cudakit}
BUILD=${MESA_DEVICE_BUILD_DIR:-/tmp/mesa-kernels-build}
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
section() { echo; echo "=== $* ==="; }

section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 |
  sed 's/^/gpu: /' | tee -a "$SUMMARY"
NVCC=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
"$NVCC" --version 2>&1 | tail -n 2
cmake --version 2>&1 | head -n 1
c++ --version 2>&1 | head -n 1
ldd --version 2>&1 | head -n 1
[ -d "$KIT" ] || note "kit: $KIT missing (run tools/cuda/make_kit.sh here and carry build-cudakit)"

# cuBLAS 13 for the dynamic link: the toolkit's, else the pip wheel's.
CUBLAS_DIR=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib; do
  if ls "$d"/libcublas.so.13* >/dev/null 2>&1; then CUBLAS_DIR=$d; break; fi
done
if [ -z "$CUBLAS_DIR" ]; then
  f=$(find / -xdev -name 'libcublas.so.13*' -not -path '/proc/*' 2>/dev/null | head -n 1)
  [ -n "$f" ] && CUBLAS_DIR=$(dirname "$f")
fi
note "cublas: ${CUBLAS_DIR:-NOT FOUND}"
LIBS="$KIT/prefix/lib/x86_64-linux-gnu:$KIT/runtime-libs${CUBLAS_DIR:+:$CUBLAS_DIR}"

# Runs one test binary: $1 label, $2 binary, rest: extra gtest flags. Summarises the result.
overall=1
run_tests() {
  local label=$1 bin=$2; shift 2
  local lib_path=$LIBS
  if LD_LIBRARY_PATH=$lib_path ldd "$bin" 2>/dev/null | grep -q "not found"; then
    lib_path="$lib_path:$KIT/fallback-libs"
  fi
  if LD_LIBRARY_PATH=$lib_path ldd "$bin" 2>/dev/null | grep "not found"; then
    note "$label: missing shared libraries (above)"
  fi
  local log="$OUTDIR/$label.log"
  local t; t=$(limit 150)
  if [ "$t" -lt 20 ]; then note "$label: skipped, out of time budget"; return 0; fi
  LD_LIBRARY_PATH=$lib_path timeout "$t" "$bin" --gtest_output="xml:$OUTDIR/$label.xml" "$@" \
    > "$log" 2>&1
  local rc=$?
  local passed failed skipped
  passed=$(grep -c '^\[       OK \]' "$log")
  failed=$(grep -c '^\[  FAILED  \] .*(' "$log")
  skipped=$(grep -c '^\[  SKIPPED \] .*(' "$log")
  note "$label: rc=$rc passed=$passed failed=$failed skipped=$skipped"
  grep '^\[  FAILED  \] .*(' "$log" | sed 's/^/    /' | head -n 40 | tee -a "$SUMMARY"
  # The first lines of each failure message, for the summary.
  grep -B1 -A3 ': Failure$' "$log" | head -n 60 > "$OUTDIR/$label.failures.txt"
  if [ "$skipped" != 0 ]; then
    grep -m1 -A1 'Skipped$' "$log" | tail -n 1 | sed 's/^/    skip reason: /' | tee -a "$SUMMARY"
  fi
  if [ "$rc" = 0 ] && [ "$failed" = 0 ] && [ "$skipped" = 0 ] && [ "$passed" -gt 0 ]; then
    overall=0
  fi
  return 0
}

section "prebuilt tests"
PREBUILT="$KIT/prebuilt/mesa_kernel_tests"
if [ -x "$PREBUILT" ]; then
  want=$(cat "$KIT/prebuilt/sources.sha256" 2>/dev/null)
  have=$(bash tools/cuda/source_hash.sh 2>/dev/null)
  if [ "$want" = "$have" ]; then note "prebuilt: matches these sources"; else
    note "prebuilt: STALE (built from other sources than these; trust the fresh build)"; fi
  run_tests prebuilt "$PREBUILT"
else
  note "prebuilt: none carried"
fi

BUILT=""
if [ "${MESA_DEVICE_BUILD:-1}" = "1" ]; then
  section "fresh build (MESA_KERNELS_ONLY)"
  t0=$(date +%s)
  # -include cstdint: Abseil 20220623 predates GCC 13's leaner headers (missing <cstdint>
  # includes); harmless on other compilers.
  if timeout "$(limit 120)" cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
       -DCMAKE_CUDA_COMPILER="$NVCC" -DMESA_KERNELS_ONLY=ON -DMESA_WITH_SERVER=OFF \
       -DMESA_WITH_CUDA=ON -DMESA_BUILD_TESTS=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
       -DMESA_GTEST_SOURCE_DIR="$KIT/googletest" -DCMAKE_PREFIX_PATH="$KIT/prefix" \
       -DBLAS_LIBRARIES="$KIT/blis/libblis.a" -DCBLAS_INCLUDE_DIR="$KIT/blis/include" \
       -DCMAKE_CXX_FLAGS="-include cstdint" -DCMAKE_CUDA_FLAGS="-include cstdint" \
       > "$OUTDIR/configure.log" 2>&1 &&
     timeout "$(limit 240)" cmake --build "$BUILD" -j "$(nproc)" --target mesa_kernel_tests \
       > "$OUTDIR/build.log" 2>&1; then
    note "build: ok in $(( $(date +%s) - t0 )) s"
    BUILT="$BUILD/tests/kernels/mesa_kernel_tests"
    run_tests built "$BUILT"
  else
    note "build: FAILED after $(( $(date +%s) - t0 )) s (configure.log / build.log)"
    grep -E "error|Error|FAILED" "$OUTDIR/configure.log" "$OUTDIR/build.log" 2>/dev/null |
      head -n 15 | sed 's/^/    /' | tee -a "$SUMMARY"
  fi
fi

if [ "${MESA_SANITIZE:-1}" = "1" ]; then
  section "compute-sanitizer"
  BIN=${BUILT:-$PREBUILT}
  SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  FILTER='Shapes/MesaDecodeTest.*b1_h2_k16*:Shapes/MesaDecodeTest.*b4_h3_k50*:Shapes/MesaDecodeTest.*b3_h2_k64_bf16_adaptive_cap*:Shapes/MixerInputsTest.*:Shapes/NormTest.*r5_d96_bf16:Shapes/HeadRmsNormTest.*:Dtypes/ElementwiseTest.*bf16'
  if [ -x "$SAN" ] && [ -x "$BIN" ]; then
    for tool in memcheck racecheck; do
      t=$(limit 90)
      if [ "$t" -lt 20 ]; then note "compute-sanitizer $tool: skipped, out of time budget"; continue; fi
      LD_LIBRARY_PATH="$LIBS:$KIT/fallback-libs" timeout "$t" "$SAN" --tool "$tool" \
        --error-exitcode 99 "$BIN" --gtest_filter="$FILTER" > "$OUTDIR/sanitizer-$tool.log" 2>&1
      rc=$?
      note "compute-sanitizer $tool: rc=$rc ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUTDIR/sanitizer-$tool.log") clean summaries; 99 = errors found)"
      grep -m 5 -E "^=========  *(Invalid|Race|Error)" "$OUTDIR/sanitizer-$tool.log" | sed 's/^/    /' |
        tee -a "$SUMMARY"
    done
  else
    note "compute-sanitizer: not run (tool or binary missing)"
  fi
fi

section "summary ($(( $(date +%s) - START )) s)"
cat "$SUMMARY"
if [ -n "${OUT:-}" ]; then
  cp "$SUMMARY" "$OUT/summary.txt"
  tar czf "$OUT/device_check.tar.gz" -C "$(dirname "$OUTDIR")" "$(basename "$OUTDIR")"
fi
exit $overall
