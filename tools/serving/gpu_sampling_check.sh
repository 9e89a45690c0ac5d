#!/usr/bin/env bash
# On the GPU machine: what choosing tokens on the GPU (serve --device-sampling, default on) buys
# the server on the random 1.3B (vocab 32,000; written by tools/serving/random_13b.sh, needs
# fla's wheels in .whl/). For each setting, starts `mesaserve serve --device cuda` and runs
# `mesaserve loadtest` with short prompts at concurrency CONCS (default "8 64"): plain sampling
# at temperature 1.0, greedy, and at temperature 0.8 with top-p 0.9, with a repetition penalty
# of 1.2, and with 5 logprobs (all device choices when on), then SIGTERMs the server. SETTINGS (default
# "on off") picks the settings; the time from start to a SERVING health answer is logged.
#   BUILD_DIR=build-cuda tools/serving/pack_server.sh   (here), then
#   run(command="bash tools/serving/gpu_sampling_check.sh", carry=["build-server", ".whl/<fla wheels>"])
set -u
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
LOG="$OUTDIR/sampling.txt"
bash tools/serving/random_13b.sh /tmp/m13
. tools/serving/gpu_server_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$LOG"
for setting in ${SETTINGS:-on off}; do
  flag=--device-sampling; [ "$setting" = off ] && flag=--no-device-sampling
  "$BIN" serve --model /tmp/m13 --device cuda --slots 64 $flag \
    --listen 127.0.0.1:50093 --metrics-listen "" > /tmp/sampling_server.log 2>&1 &
  SERVER=$!
  T0=$(date +%s.%N)
  wait_serving 127.0.0.1:50093 120
  echo "== device sampling $setting: serving after $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $T0}") s" | tee -a "$LOG"
  for sampling in "--temperature 1.0" "--temperature 0" "--temperature 0.8 --top-p 0.9" \
                  "--temperature 0.8 --repetition-penalty 1.2" "--temperature 0.8 --top-logprobs 5"; do
    for c in ${CONCS:-8 64}; do
      echo "== device sampling $setting, $sampling, concurrency $c" | tee -a "$LOG"
      "$BIN" loadtest --address 127.0.0.1:50093 --concurrency "$c" --requests $((4 * c)) --warmup "$c" \
        --prompt-tokens 32 --max-new-tokens 64 $sampling 2>&1 |
        grep -E "output tokens/s|ITL|errors" | tee -a "$LOG"
    done
  done
  kill -TERM $SERVER; wait $SERVER; echo "server exit $?" | tee -a "$LOG"
done
