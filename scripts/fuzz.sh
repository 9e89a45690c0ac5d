#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan in their own build
# directory and runs each one on a copy of its seed corpus (docs/fuzzing.md).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   fuzz each target for that long (default 20)
#   scripts/fuzz.sh --regress [TARGET...]              run every seed once, no fuzzing (fast; CI)
#
# TARGET is a name such as fuzz_safetensors (default: all built, less MESA_FUZZ_SKIP). Exits 1 on any crash, leak,
# timeout (-timeout=10 s per input) or out-of-memory (-rss_limit_mb=2048), printing the
# reproducer's path; 77 when clang or libFuzzer is missing; 2 on a usage error.
# Installs nothing: scripts/install-deps.sh installs clang-14, libclang-rt-14-dev, libomp-14-dev
# and llvm-14 (llvm-symbolizer, for readable stack traces).
#
# Environment:
#   MESA_FUZZ_BUILD_DIR  build directory (default: build-fuzz)
#   MESA_FUZZ_OUT        where corpora, logs and reproducers go (default: $MESA_FUZZ_BUILD_DIR/fuzz-out);
#                        emptied at the start of each run, never inside tests/
#   MESA_JOBS            build parallelism (default: nproc)
#   MESA_FUZZ_CC, MESA_FUZZ_CXX  the compilers (default: clang-14/clang++-14, else clang/clang++)
#   MESA_FUZZ_ARGS       extra libFuzzer flags for every target (e.g. -jobs=2 -workers=2)
#   MESA_FUZZ_SKIP       targets whose seeds are only replayed, not fuzzed, when no target is named:
#                        they have known, not yet fixed crashes (docs/fuzzing.md, "Findings").
#                        Default: none. Name a target to fuzz it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit "${1:-2}"; }

MODE=fuzz
SECONDS_PER_TARGET=20
TARGETS=()
for arg in "$@"; do
  case "$arg" in
    --regress) MODE=regress ;;
    -h|--help) usage 0 ;;
    fuzz_*) TARGETS+=("$arg") ;;
    *)
      if [[ "$arg" =~ ^[0-9]+$ ]] && [ "$arg" -gt 0 ]; then SECONDS_PER_TARGET="$arg"; else
        echo "fuzz.sh: unknown argument '$arg'" >&2; usage; fi ;;
  esac
done

log() { printf '[fuzz] %s\n' "$*" >&2; }

# --- Toolchain: clang with libFuzzer and the sanitizer runtimes --------------------------------
pick() { for c in "$@"; do if command -v "$c" >/dev/null 2>&1; then echo "$c"; return; fi; done; }
CC_BIN="${MESA_FUZZ_CC:-$(pick clang-14 clang)}"
CXX_BIN="${MESA_FUZZ_CXX:-$(pick clang++-14 clang++)}"
if [ -z "$CC_BIN" ] || [ -z "$CXX_BIN" ]; then
  log "clang not found: the fuzz targets need clang with libFuzzer."
  log "Install it with scripts/install-deps.sh, or: apt-get install clang-14 libclang-rt-14-dev libomp-14-dev llvm-14"
  exit 77
fi
probe_dir="$(mktemp -d)"
trap 'rm -rf "$probe_dir"' EXIT
# libFuzzer and the sanitizer runtimes (libclang-rt-14-dev), and OpenMP for clang (libomp-14-dev;
# the CPU kernels need it).
printf '#include <omp.h>\n#include <cstddef>\n#include <cstdint>\nextern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return omp_get_max_threads() < 0; }\n' \
  > "$probe_dir/probe.cc"
if ! "$CXX_BIN" -fsanitize=fuzzer,address,undefined -fopenmp "$probe_dir/probe.cc" -o "$probe_dir/probe" \
     >"$probe_dir/probe.log" 2>&1; then
  cat "$probe_dir/probe.log" >&2
  log "$CXX_BIN cannot link a libFuzzer program with OpenMP (libFuzzer is in libclang-rt-14-dev,"
  log "OpenMP in libomp-14-dev). Install them with scripts/install-deps.sh, or:"
  log "  apt-get install clang-14 libclang-rt-14-dev libomp-14-dev llvm-14"
  exit 77
fi
# Symbolized stack traces in reports.
if [ -z "${ASAN_SYMBOLIZER_PATH:-}" ]; then
  for s in "$(dirname "$(readlink -f "$(command -v "$CXX_BIN")")")/llvm-symbolizer" \
           "$(command -v llvm-symbolizer-14 || true)" "$(command -v llvm-symbolizer || true)"; do
    if [ -n "$s" ] && [ -x "$s" ]; then export ASAN_SYMBOLIZER_PATH="$s"; break; fi
  done
fi

# --- Build -------------------------------------------------------------------------------------
BUILD_DIR="${MESA_FUZZ_BUILD_DIR:-build-fuzz}"
JOBS="${MESA_JOBS:-$(nproc)}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
# Instrumentation of every library the fuzzers link (coverage for libFuzzer, ASan, UBSan);
# the fuzz executables add -fsanitize=fuzzer themselves (tests/CMakeLists.txt).
SAN_FLAGS="-fsanitize=address,undefined -fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
build_start=$SECONDS
log "configuring $BUILD_DIR with $CXX_BIN"
CC="$CC_BIN" CXX="$CXX_BIN" nice cmake -S . -B "$BUILD_DIR" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMESA_WITH_CUDA=OFF -DMESA_BUILD_TESTS=ON \
  -DMESA_BUILD_FUZZERS=ON \
  -DCMAKE_C_FLAGS="$SAN_FLAGS" -DCMAKE_CXX_FLAGS="$SAN_FLAGS" ${MESA_CMAKE_ARGS:-} >"$probe_dir/cmake.log" 2>&1 \
  || { cat "$probe_dir/cmake.log" >&2; log "configure failed"; exit 1; }
log "building the fuzz targets (-j $JOBS)"
nice cmake --build "$BUILD_DIR" -j "$JOBS" --target mesa_fuzzers
log "build took $((SECONDS - build_start)) s"

# Targets with known crashes only replay their seeds, unless named on the command line.
SKIP=" "
if [ "${#TARGETS[@]}" -eq 0 ]; then
  SKIP=" ${MESA_FUZZ_SKIP:-} "
  for f in "$BUILD_DIR"/tests/fuzz_*; do
    [ -x "$f" ] && [ -f "$f" ] && TARGETS+=("$(basename "$f")")
  done
fi
[ "${#TARGETS[@]}" -gt 0 ] || { log "no fuzz targets were built"; exit 1; }

# --- Run ---------------------------------------------------------------------------------------
OUT="${MESA_FUZZ_OUT:-$BUILD_DIR/fuzz-out}"
# It is emptied below: refuse the checkout itself, its parents and the seed corpora.
case "$ROOT/" in "$(readlink -m "$OUT")/"*) log "MESA_FUZZ_OUT=$OUT contains the checkout"; exit 2 ;; esac
case "$(readlink -m "$OUT")/" in
  "$ROOT/tests/"*) log "MESA_FUZZ_OUT must not be inside tests/ (the seed corpora live there)"; exit 2 ;;
esac
rm -rf "$OUT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"

# Per-target libFuzzer flags: input size bounds above libFuzzer's default of 4096 where larger
# inputs matter (prompts past max_prompt_tokens; long texts for the tokenizer).
target_args() {
  case "$1" in
    fuzz_generate_request) echo "-max_len=20000" ;;
    # Huge-mode inputs take ~0.1-0.5 s: spend less of the time on slow inputs.
    fuzz_tokenizer) echo "-max_len=16384 -entropic_scale_per_exec_time=1" ;;
    fuzz_safetensors) echo "-max_len=8192" ;;
  esac
}

failed=()
summary=()
for target in "${TARGETS[@]}"; do
  bin="$BUILD_DIR/tests/$target"
  stem="${target#fuzz_}"
  seeds="tests/fuzz/corpus/$stem"
  [ -x "$bin" ] || { log "$target: not built"; failed+=("$target (not built)"); continue; }
  [ -d "$seeds" ] || { log "$target: no seed corpus $seeds"; failed+=("$target (no seeds)"); continue; }
  work="$OUT/$target"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp -r "$seeds"/. "$work/corpus/"
  args=(-rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "-artifact_prefix=$work/artifacts/")
  [ -f "tests/fuzz/dict/$stem.dict" ] && args+=("-dict=tests/fuzz/dict/$stem.dict")
  # shellcheck disable=SC2207
  args+=($(target_args "$target") ${MESA_FUZZ_ARGS:-})
  if [ "$MODE" = regress ] || [[ "$SKIP" == *" $target "* ]]; then
    args+=(-runs=0)
    log "$target: running the $(find "$seeds" -type f | wc -l) seeds once$([ "$MODE" = fuzz ] && echo " (in MESA_FUZZ_SKIP: known crashes, not fuzzed)")"
  else
    args+=("-max_total_time=$SECONDS_PER_TARGET")
    log "$target: fuzzing for $SECONDS_PER_TARGET s"
  fi
  rc=0
  nice "$bin" "${args[@]}" "$work/corpus" >"$work/log.txt" 2>&1 || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log.txt" | tail -n1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log.txt" | tail -n1)"
  rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "$work/log.txt" | tail -n1)"
  last="$(grep -E '^#[0-9]+' "$work/log.txt" | tail -n1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' || true)"
  line="$target: rc=$rc execs=${execs:-?} exec/s=${rate:-?} peak_rss_mb=${rss:-?} ${last:-} corpus_files=$(find "$work/corpus" -type f | wc -l)"
  summary+=("$line")
  artifacts=$(find "$work/artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | sort)
  if [ "$rc" -ne 0 ] || [ -n "$artifacts" ]; then
    failed+=("$target")
    log "$target FAILED (exit $rc); log: $work/log.txt"
    grep -E '^(==[0-9]+==ERROR|SUMMARY|==== FUZZ|\*\*\*|.*runtime error)' "$work/log.txt" | head -n 20 >&2 || true
    for a in $artifacts; do
      log "reproducer: $a"
      log "  rerun with: $bin $a"
    done
  else
    log "$line"
  fi
done

echo
echo "fuzz.sh summary ($MODE$([ "$MODE" = fuzz ] && echo ", $SECONDS_PER_TARGET s per target")); logs under $OUT"
for l in "${summary[@]}"; do echo "  $l"; done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all targets passed"
