#!/usr/bin/env bash
# Build the training corpus, the tokenizer, the token files and the GPU bundle.
#
#   bash tools/train/corpus/build.sh            # everything
#   STEPS="tokenizer tokenize" bash ...          # only some steps (corpus tokenizer tokenize parity)
#
# Needs: Debian 12 (bookworm) as root, with apt (Debian archive) and pip (PyPI) access.
# Debian packages are only downloaded and unpacked under tools/train/work/, never installed;
# Python dependencies go into tools/train/work/venv.  Outputs: tools/train/work/data/ and
# tools/train/work/gpu_bundle/ (see tools/train/corpus/README.md).
#
# Environment:
#   WORK=DIR              work directory (default tools/train/work)
#   SKIP_APT_UPDATE=1     do not run apt-get update
#   ALLOW_VERSION_DRIFT=1 if a pinned Debian version has left the archive, use apt's candidate
#   NICE=10               niceness for the heavy steps
#   CORPUS_ARGS="..."     extra build_corpus.py arguments, e.g. "--exclude treasury-of-david,mhcc"
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${WORK:-$HERE/../work}"
mkdir -p "$WORK/logs"
WORK="$(cd "$WORK" && pwd)"
STEPS="${STEPS:-corpus tokenizer tokenize parity}"
NICE="${NICE:-10}"
LXML_VERSION=5.3.0
SENTENCEPIECE_VERSION=0.2.3

log() { printf '[build.sh %(%H:%M:%S)T] %s\n' -1 "$*"; }

if [[ "${SKIP_APT_UPDATE:-0}" != 1 ]]; then
  log "apt-get update"
  apt-get update -qq
fi

# python3 with venv support (python3-venv is not in a minimal Debian image)
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  log "installing python3-venv"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
VENV="$WORK/venv"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check \
  "lxml==$LXML_VERSION" "sentencepiece==$SENTENCEPIECE_VERSION"
PY="$VENV/bin/python"

run_step() {  # name, command...
  local name=$1; shift
  log "step $name: $*"
  local t0=$SECONDS
  # full output in logs/NAME.log; sentencepiece's absl warnings are kept out of the terminal
  set +e
  nice -n "$NICE" "$@" 2>&1 | tee "$WORK/logs/$name.log" | grep -v -e '^W0000' -e '^WARNING: All log' -e '^]'
  local rc=${PIPESTATUS[0]}
  set -e
  log "step $name finished in $((SECONDS - t0))s (exit $rc)"
  return "$rc"
}

for step in $STEPS; do
  case "$step" in
    corpus)
      args=(--work "$WORK")
      [[ "${ALLOW_VERSION_DRIFT:-0}" == 1 ]] && args+=(--allow-version-drift)
      # shellcheck disable=SC2206
      [[ -n "${CORPUS_ARGS:-}" ]] && args+=(${CORPUS_ARGS})
      run_step corpus "$PY" "$HERE/build_corpus.py" "${args[@]}" ;;
    tokenizer)
      run_step tokenizer "$PY" "$HERE/train_tokenizer.py" --data "$WORK/data" ;;
    tokenize)
      run_step tokenize "$PY" "$HERE/tokenize_corpus.py" --work "$WORK" ;;
    parity)
      run_step parity "$PY" "$HERE/check_cpp_parity.py" --work "$WORK" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
log "done; outputs in $WORK/data and $WORK/gpu_bundle"
