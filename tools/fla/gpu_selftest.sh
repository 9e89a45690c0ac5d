#!/usr/bin/env bash
# Self-test of tools/fla/make_goldens.py and tools/train/train_mesanet.py on a GPU machine,
# with stand-in data (Python stdlib sources) instead of the real corpus.
# Run from the repository root; .whl/ must hold the fla wheels.
#   bash tools/fla/gpu_selftest.sh            # results under ${OUT:-/tmp/fla_selftest}
# Knobs (env): GOLDENS_TIMEOUT (300), TRAIN_TIMEOUT (280), RUN1_BUDGET (140), RUN2_BUDGET (70)
set -u
OUTDIR=${OUT:-/tmp/fla_selftest}
mkdir -p "$OUTDIR"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import sys, torch, triton, transformers, safetensors, sentencepiece, numpy, einops, fla; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'fla', fla.__version__, 'numpy', numpy.__version__)"
rc=0

t0=$(date +%s)
timeout "${GOLDENS_TIMEOUT:-300}" python3 tools/fla/make_goldens.py --out /tmp/fla_goldens \
    --tar "$OUTDIR/fla_goldens.tar" 2>&1 | tee "$OUTDIR/goldens.log"
r=${PIPESTATUS[0]}; echo "make_goldens rc=$r ($(( $(date +%s) - t0 ))s)"; [ "$r" = 0 ] || rc=1

t0=$(date +%s)
python3 tools/train/make_fake_data.py --out /tmp/fla_fakedata --max-mb 8 --xz || exit 1
R1=${RUN1_BUDGET:-140}
R2=${RUN2_BUDGET:-70}
printf '%s\n' \
  "[{\"name\": \"st-h256-l4\", \"hidden\": 256, \"layers\": 4, \"heads\": 4, \"head_dim\": 64, \"time_budget\": $R1}," \
  " {\"name\": \"st-h128-l2-gate-untied\", \"hidden\": 128, \"layers\": 2, \"heads\": 2, \"head_dim\": 64," \
  "  \"tie\": false, \"output_gate\": true, \"batch_tokens\": 32768, \"time_budget\": $R2}]" \
  > /tmp/fla_selftest_runs.json
timeout "${TRAIN_TIMEOUT:-280}" python3 tools/train/train_mesanet.py --data /tmp/fla_fakedata --out /tmp/fla_runs \
    --configs /tmp/fla_selftest_runs.json --eval-max-tokens 100000 2>&1 | tee "$OUTDIR/train.log"
r=${PIPESTATUS[0]}; echo "train_mesanet rc=$r ($(( $(date +%s) - t0 ))s)"; [ "$r" = 0 ] || rc=1
tar cf "$OUTDIR/fla_runs_reports.tar" --exclude='*.safetensors' --exclude='tokenizer.model' -C /tmp fla_runs
exit $rc
