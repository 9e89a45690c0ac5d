#!/usr/bin/env bash
# On the GPU machine: what --prefill-interval does for the server and the engine alone. Three
# servers (--prefill-interval 1, 4 and 8; bundled model, 64 slots) stay up while the loads
# alternate between them, REPS rounds: closed loop at 64 streams (the server-vs-engine
# benchmark, with the engine alone at each interval through `bench --engine-concurrency 64`) and
# open-loop Poisson arrivals at RATES requests/s, the server beside the engine alone at the same
# rate (`bench --engine-rate`: where arrivals come one by one and each step would otherwise
# launch a small prefill; docs/serving-benchmarks.md, "The GPU server under open-loop arrivals"). Needs build-server/server.tar.xz (BUILD_DIR=build-cuda
# tools/serving/pack_server.sh). Output: $OUT/gpu_prefill_interval.txt.
set -u
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_prefill_interval.txt"
REPS=${REPS:-2}
RATES=${RATES:-"1000 2000"}
INTERVALS=${INTERVALS:-"1 4 8"}
M=models/mesanet-tiny-en
. tools/serving/gpu_server_env.sh
echo "$(nvidia-smi --query-gpu=name --format=csv,noheader), $(date -u)" | tee "$LOG"
port() { echo $((50200 + $1)); }
for k in $INTERVALS; do
  "$BIN" serve --device cuda --model $M --slots 64 --prefill-interval "$k" --listen 127.0.0.1:"$(port "$k")" \
    --metrics-listen "" > "/tmp/interval_server_$k.log" 2>&1 &
done
for k in $INTERVALS; do
  wait_serving 127.0.0.1:"$(port "$k")" 120 || echo "server $k not serving" | tee -a "$LOG"
  "$BIN" loadtest --address 127.0.0.1:"$(port "$k")" --concurrency 64 --requests 256 > /dev/null 2>&1
done
for rep in $(seq "$REPS"); do
  for k in $INTERVALS; do
    e=$("$BIN" bench --device cuda --model $M --batches 1 --steps 4 --prefill-tokens 32 --copy-mb 64 \
          --engine-concurrency 64 --load-requests 1600 --prefill-interval "$k" 2>&1 |
        awk '/engine load/{f=1} f && $1 == "64" {print $4; exit}')
    "$BIN" loadtest --address 127.0.0.1:"$(port "$k")" --concurrency 64 --connections 8 --requests 1600 \
      --warmup 64 --temperature 1.0 > /tmp/interval_closed.txt 2>&1
    echo "rep $rep interval $k closed 64: engine $e server $(awk '/output tokens\/s/{t=$3} /^  TTFT/{p=$2 "/" $4} END{print t, "ttft p50/p99", p}' /tmp/interval_closed.txt)" | tee -a "$LOG"
  done
  for rate in $RATES; do
    for k in $INTERVALS; do
      e=$("$BIN" bench --device cuda --model $M --batches 1 --steps 4 --prefill-tokens 32 --copy-mb 64 \
            --engine-concurrency 64 --engine-rate "$rate" --load-requests $((4 * rate)) --prefill-interval "$k" 2>&1 |
          awk '/engine load/{f=1} f && $1 == "64" {print $4, "tokens/s, shed", $5; exit}')
      echo "rep $rep interval $k rate $rate engine alone: $e" | tee -a "$LOG"
      "$BIN" loadtest --address 127.0.0.1:"$(port "$k")" --rate "$rate" --concurrency 1024 --connections 64 \
        --duration 4 --timeout 30 --temperature 1.0 > /tmp/interval_open.txt 2>&1
      echo "rep $rep interval $k rate $rate: $(awk '/^  requests  /{ok=$2; f=$4} /goodput/{g=$3} /output tokens\/s/{t=$3} /^  TTFT/{p=$2 "/" $4} /^  ITL/{i=$2} END{print "ok", ok, "shed", f, "tokens/s", t, "ttft p50/p99", p, "itl p50", i}' /tmp/interval_open.txt)" | tee -a "$LOG"
    done
  done
done
kill -TERM $(jobs -p) 2>/dev/null
wait
