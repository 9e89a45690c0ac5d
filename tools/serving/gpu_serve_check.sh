#!/usr/bin/env bash
# On the GPU machine: the real server on the CUDA backend, end to end. Unpacks
# build-server/server.tar.xz (BUILD_DIR=build-cuda tools/serving/pack_server.sh here), starts
# `mesaserve serve --device cuda` on the bundled model, checks readiness with
# `mesaserve health`, generates once, runs `mesaserve loadtest` at concurrency 1, 8 and 64,
# then SIGTERM (exit 0 expected). Output in $OUT/gpu_serve.txt. SLOTS (default 0: the CUDA
# runner fills the device, at most 256) is passed as --slots.
set -u
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_serve.txt"
. tools/serving/gpu_server_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$LOG"
"$BIN" generate --device cuda --prompt "To configure the server," --max-new-tokens 40 --seed 3 2>&1 | tee -a "$LOG"
"$BIN" serve --device cuda --slots ${SLOTS:-0} --listen 127.0.0.1:50081 --metrics-listen 127.0.0.1:19181 \
  > /tmp/gpu_server.log 2>&1 &
SERVER=$!
wait_serving 127.0.0.1:50081 60
"$BIN" health --address 127.0.0.1:50081 2>&1 | tee -a "$LOG"
grep -m1 "state slots" /tmp/gpu_server.log | tee -a "$LOG"
for c in 1 8 64; do
  echo "== loadtest concurrency $c" | tee -a "$LOG"
  "$BIN" loadtest --address 127.0.0.1:50081 --concurrency $c --requests $((8 * c)) --warmup $c \
    --temperature 1.0 2>&1 | tee -a "$LOG"
done
curl -s 127.0.0.1:19181/metrics 2>/dev/null | grep -E "^mesa_state_slots|^mesa_requests_total" | head -5 | tee -a "$LOG"
kill -TERM $SERVER; wait $SERVER; echo "server exit $?" | tee -a "$LOG"
tail -n 8 /tmp/gpu_server.log | tee -a "$LOG"
