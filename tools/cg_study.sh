#!/usr/bin/env bash
# Adaptive-CG study: perplexity and CG-iteration distributions of a model on a text file for
# fixed 30-step CG and several adaptive tolerances. Writes one JSON report per run into OUT_DIR,
# then docs tables via tools/cg_study_report.py.
#   tools/cg_study.sh MODEL_DIR TEXT_FILE OUT_DIR [TOLERANCES...]
set -euo pipefail
model=$1 text=$2 out=$3
shift 3
tols=("${@:-0.1 0.03 0.01 0.003 0.001 0.0001}")
bin=${MESASERVE:-build/cli/mesaserve}
mkdir -p "$out"
[ -f "$out/fixed30.json" ] || "$bin" perplexity --model "$model" --file "$text" --cg-mode fixed \
  --report "$out/fixed30.json" --progress=false
for tol in ${tols[@]}; do
  [ -f "$out/adaptive_$tol.json" ] || "$bin" perplexity --model "$model" --file "$text" \
    --cg-mode adaptive --cg-tol "$tol" --cg-max-iters 30 --report "$out/adaptive_$tol.json" --progress=false
done
