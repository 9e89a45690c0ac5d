#!/usr/bin/env bash
# On the GPU machine: how the engine's --prefill-chunk trades time to first token against the
# inter-token latency of running streams, on a model big enough for the GPU to matter. Writes a
# random 1.3B checkpoint in fla's layout (fla's default MesaNetConfig, tools/fla/make_goldens.py's
# builder; needs fla's wheels in .whl/), then for each chunk size starts `mesaserve serve
# --device cuda` on it and runs `mesaserve loadtest` with 2048-token prompts (random token ids;
# the checkpoint has no tokenizer) at concurrency 4, and SIGTERMs the server.
#   BUILD_DIR=build-cuda tools/serving/pack_server.sh   (here), then
#   run(command="bash tools/serving/gpu_prefill_chunk_check.sh",
#       carry=["build-server", ".whl/<fla wheels>"])
# CHUNKS (default "256 1024 2048"), PROMPT (2048), NEW (32), CONC (4), REQS (16).
set -u
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
LOG="$OUTDIR/prefill_chunk.txt"
bash tools/serving/random_13b.sh /tmp/m13
. tools/serving/gpu_server_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$LOG"
for chunk in ${CHUNKS:-256 1024 2048}; do
  "$BIN" serve --model /tmp/m13 --device cuda --slots 16 --prefill-chunk "$chunk" \
    --listen 127.0.0.1:50091 --metrics-listen "" > /tmp/chunk_server.log 2>&1 &
  SERVER=$!
  wait_serving 127.0.0.1:50091 120
  echo "== --prefill-chunk $chunk" | tee -a "$LOG"
  "$BIN" loadtest --address 127.0.0.1:50091 --concurrency "${CONC:-4}" --requests "${REQS:-16}" \
    --warmup "${CONC:-4}" --prompt-tokens "${PROMPT:-2048}" --max-new-tokens "${NEW:-32}" \
    --temperature 1.0 2>&1 | grep -E "output tokens/s|TTFT|ITL|end-to-end|errors|CG " | tee -a "$LOG"
  kill -TERM $SERVER; wait $SERVER; echo "server exit $?" | tee -a "$LOG"
done
