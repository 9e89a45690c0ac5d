#!/usr/bin/env bash
# One call on the GPU machine: install fla from the carried wheels, make parity goldens with
# fla (GOLDENS_DTYPE, default float16) and train the models listed in RUNS_JSON (a
# train_mesanet.py --configs file) on the carried corpus bundle. Results come back as at most
# 8 files of at most 15 MB (the transfer limits): tar archives split into parts.
#   carry: .whl tools/train/work/gpu_bundle
set -u
OUTDIR=${OUT:-/tmp/device_out}
mkdir -p "$OUTDIR"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, transformers, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'fla', fla.__version__)"
} 2>&1 | tee "$OUTDIR/device.log"
rc=0
if [ -n "${GOLDENS_DTYPE:-float16}" ] && [ "${GOLDENS:-1}" = "1" ]; then
  t0=$(date +%s)
  timeout "${GOLDENS_TIMEOUT:-240}" python3 tools/fla/make_goldens.py --dtype "${GOLDENS_DTYPE:-float16}" \
      --out /tmp/fla_goldens --tar /tmp/fla_goldens.tar > /tmp/goldens.log 2>&1
  r=$?; echo "make_goldens rc=$r ($(( $(date +%s) - t0 ))s)" | tee -a "$OUTDIR/device.log"; [ "$r" = 0 ] || rc=1
  tail -n 8 /tmp/goldens.log | tee -a "$OUTDIR/device.log"
  cp /tmp/goldens.log /tmp/fla_goldens/ 2>/dev/null
fi
if [ -n "${RUNS_JSON:-}" ]; then
  t0=$(date +%s)
  mkdir -p /tmp/runs
  timeout "${TRAIN_TIMEOUT:-420}" python3 tools/train/train_mesanet.py --data tools/train/work/gpu_bundle \
      --out /tmp/runs --configs "$RUNS_JSON" > /tmp/runs/train.log 2>&1 || true
  mkdir -p /tmp/runs
  r=$?; echo "train_mesanet done ($(( $(date +%s) - t0 ))s)" | tee -a "$OUTDIR/device.log"
  grep -E "perplexity|prefill vs decode|tokens/s|sample \[greedy|ERROR|Error|Traceback" /tmp/runs/train.log | tail -n 30 | tee -a "$OUTDIR/device.log"
fi
# Pack: goldens and runs in one archive, split into parts under the per-file limit.
tar cf /tmp/results.tar -C /tmp $( [ -d /tmp/fla_goldens ] && echo fla_goldens ) $( [ -d /tmp/runs ] && echo runs ) 2>/dev/null
split -b 15M -d /tmp/results.tar "$OUTDIR/results.tar.part"
ls -la "$OUTDIR" | tee -a "$OUTDIR/device.log"
exit $rc
