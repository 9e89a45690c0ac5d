#!/usr/bin/env bash
# Sanitizer builds of the tests (docs/sanitizers.md).
#
#   scripts/sanitize.sh [asan|tsan|all]      (default: all = asan, then tsan)
#
# asan: build-asan, gcc -fsanitize=address,undefined (UBSan fatal), RelWithDebInfo at -O1, CUDA
#       off; ctest labels unit, model, cli, integration (the Python and shell integration tests
#       start the sanitized `mesaserve`).
# tsan: build-tsan, gcc -fsanitize=thread; the engine/sampler/metrics/task-pool unit tests and the
#       integration label (engine thread, gRPC callback reactors, metrics exposer), run with
#       OMP_NUM_THREADS=1 (libgomp is not instrumented) and tests/sanitizers/tsan.supp.
#
# Every sanitized process (test binaries, and the servers/clients the Python and shell tests
# start, whose stderr the harnesses do not keep) writes its reports to files under
# <build dir>/sanitizer-logs via log_path. The script fails (exit 1) on any test failure or any
# non-empty report file, and prints a summary.
#
# Environment:
#   MESA_ASAN_BUILD_DIR / MESA_TSAN_BUILD_DIR  build folders (default build-asan / build-tsan)
#   MESA_JOBS             build and ctest parallelism (default: nproc)
#   MESA_SAN_LABELS       ctest -L regex overriding the mode's labels
#   MESA_SAN_CTEST_ARGS   extra ctest arguments (e.g. "-R EngineTest")
#   MESA_SKIP_SLOW=1      skip the 'slow' label, as scripts/test.sh
#   MESA_CMAKE_ARGS       extra configure arguments
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE="${1:-all}"
case "$MODE" in
  asan|tsan) MODES=("$MODE") ;;
  all) MODES=(asan tsan) ;;
  -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
  *) echo "usage: $0 [asan|tsan|all]" >&2; exit 2 ;;
esac

JOBS="${MESA_JOBS:-$(nproc)}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
SUPP="$ROOT/tests/sanitizers"

summary=()
failed=0

now() { date +%s; }

# configure_and_build DIR COMPILE_FLAGS LINK_FLAGS TARGETS...  (extra configure args: cmake_extra)
configure_and_build() {
  local dir=$1 flags=$2 ldflags=$3
  shift 3
  # Configured every time, so that a change of the flags below reaches an existing folder.
  # -O1 -g: usable stacks at a bearable speed. NDEBUG stays off so assert()s run too.
  # shellcheck disable=SC2086
  cmake -S . -B "$dir" -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="$ldflags" -DCMAKE_SHARED_LINKER_FLAGS="$ldflags" \
    -DMESA_WITH_CUDA=OFF -DMESA_WITH_SERVER=ON -DMESA_BUILD_TESTS=ON \
    "${cmake_extra[@]}" ${MESA_CMAKE_ARGS:-} >/dev/null || return 1
  nice cmake --build "$dir" -j "$JOBS" --target "$@"
}

# report_files LOGDIR: prints every non-empty sanitizer report; returns 1 if there was one.
report_files() {
  local logdir=$1 found=0 f
  for f in "$logdir"/*; do
    [ -s "$f" ] || continue
    found=1
    echo "=================== sanitizer report: $f"
    head -n 150 "$f"
    [ "$(wc -l <"$f")" -gt 150 ] && echo "... ($(wc -l <"$f") lines; see the file)"
  done
  return $found
}

run_mode() {
  local mode=$1 dir flags ldflags targets logdir
  local cmake_extra=()
  # ctest selections, run one after the other: "LABEL_REGEX@NAME_REGEX" (NAME_REGEX may be empty).
  local selections=()
  case "$mode" in
    asan)
      dir="${MESA_ASAN_BUILD_DIR:-build-asan}"
      flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
      # Static runtimes: with gcc's shared libasan + libubsan, UBSan ignores log_path (both
      # export __sanitizer_set_report_path and UBSan's call binds to ASan's), so its reports
      # would only reach stderr, which the integration harness throws away.
      ldflags="$flags -static-libasan -static-libubsan"
      targets=(mesa_unit_tests mesa_model_tests mesaserve mesa_make_test_model)
      selections=('^(unit|model|cli|integration)$@')
      ;;
    tsan)
      dir="${MESA_TSAN_BUILD_DIR:-build-tsan}"
      flags="-fsanitize=thread -fno-omit-frame-pointer"
      ldflags="$flags"
      targets=(mesa_unit_tests mesaserve)
      # The CPU kernels (kernels/cpu) stay uninstrumented: they are single-threaded here
      # (OMP_NUM_THREADS=1, only ever called on the engine thread) and TSan's checks of their
      # AVX loads made the server ~17x slower than Release, too slow for the integration
      # tests' deadlines. Done with a CMake include generated into the build folder, which
      # adds -fno-sanitize=thread to the mesa_kernels_cpu target.
      mkdir -p "$dir"
      cat >"$dir/tsan-uninstrumented-kernels.cmake" <<'CMAKE'
if(PROJECT_NAME STREQUAL "mesaserve")
  cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL
                 target_compile_options mesa_kernels_cpu PRIVATE -fno-sanitize=thread)
endif()
CMAKE
      cmake_extra=(-DCMAKE_PROJECT_INCLUDE="$ROOT/$dir/tsan-uninstrumented-kernels.cmake")
      # The threaded unit tests (engine thread and sinks, pipelined and not, sampler, metrics
      # from many threads; the rest is single-threaded numerics that asan covers), then every
      # integration test. Parametrized suites are named Prefix/Suite.Test/Param by ctest.
      selections=('^unit$@^(Runners/EngineTest|EnginePipelineTest|EngineDeviceChoiceTest|EnginePrefillIntervalTest|StopMatcherTest|SamplerTest|MetricsTest|TaskPoolTest)\.' '^integration$@')
      ;;
  esac
  logdir="$ROOT/$dir/sanitizer-logs"

  echo "### $mode: building $dir"
  local t0 t1 t2
  t0=$(now)
  if ! configure_and_build "$dir" "$flags" "$ldflags" "${targets[@]}"; then
    summary+=("$mode: BUILD FAILED")
    failed=1
    return
  fi
  t1=$(now)

  rm -rf "$logdir"
  mkdir -p "$logdir"
  local rc=0
  (
    export OMP_WAIT_POLICY=passive
    # The fault test's 10,000 requests take longer than its timeout under a sanitizer.
    export MESA_FAULT_TEST_REQUESTS="${MESA_FAULT_TEST_REQUESTS:-1000}"
    case "$mode" in
      asan)
        export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:log_path=$logdir/asan"
        export LSAN_OPTIONS="suppressions=$SUPP/lsan.supp:print_suppressions=0"
        export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$SUPP/ubsan.supp:log_path=$logdir/ubsan"
        ;;
      tsan)
        # libgomp is not TSan-instrumented: with one OpenMP thread the parallel regions run on
        # the calling thread and its uninstrumented barriers cannot hide happens-before edges.
        export OMP_NUM_THREADS=1
        # halt_on_error=0: collect every race of a run; a process with reports exits 66.
        export TSAN_OPTIONS="halt_on_error=0:ignore_noninstrumented_modules=1:exitcode=66:second_deadlock_stack=1:history_size=4:suppressions=$SUPP/tsan.supp:print_suppressions=0:log_path=$logdir/tsan"
        ;;
    esac
    if [ -n "${MESA_SAN_LABELS:-}" ]; then selections=("$MESA_SAN_LABELS@"); fi
    status=0
    for sel in "${selections[@]}"; do
      args=(--test-dir "$dir" --output-on-failure --no-tests=error --timeout 1800 -j "$JOBS" -L "${sel%%@*}")
      [ -n "${sel#*@}" ] && args+=(-R "${sel#*@}")
      [ "${MESA_SKIP_SLOW:-0}" = "1" ] && args+=(-LE slow)
      # shellcheck disable=SC2206
      [ -n "${MESA_SAN_CTEST_ARGS:-}" ] && args+=(${MESA_SAN_CTEST_ARGS})
      echo "### $mode: ctest ${args[*]}"
      ctest "${args[@]}" || status=1
    done
    exit $status
  ) || rc=$?
  t2=$(now)

  local reports=0
  report_files "$logdir" || reports=1
  local nrep
  nrep=$(find "$logdir" -type f -size +0 | wc -l)
  local line="$mode: build $((t1 - t0)) s, tests $((t2 - t1)) s, ctest exit $rc, $nrep sanitizer report file(s) in $logdir"
  if [ "$rc" -ne 0 ] || [ "$reports" -ne 0 ]; then
    summary+=("FAIL $line")
    failed=1
  else
    summary+=("ok   $line")
  fi
}

for m in "${MODES[@]}"; do run_mode "$m"; done

echo
echo "=== sanitizer summary"
for s in "${summary[@]}"; do echo "$s"; done
exit $failed
