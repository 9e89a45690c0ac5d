#!/usr/bin/env bash
# On the GPU machine: does a greedy request generate the same tokens alone as in a full batch,
# through the real server on the CUDA backend? For `serve --batch-invariant` and without it:
# the same REQUESTS greedy requests (prompts and seeds follow the request index) at concurrency
# 1 and at concurrency REQUESTS, MAX_NEW tokens each; counts the requests whose tokens differ
# (loadtest --json's per-request token hash). MODEL (default the bundled model; e.g. /tmp/m13
# from random_13b.sh). Then the same with --batch-invariant --no-pipeline-decode: a request's
# tokens must not depend on whether decode steps are pipelined either. Needs
# build-server/server.tar.xz from a CUDA build. Output in $OUT/gpu_batch_invariance.txt.
set -u
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_batch_invariance.txt"
. tools/serving/gpu_server_env.sh
MODEL=${MODEL:-models/mesanet-tiny-en}
REQUESTS=${REQUESTS:-64}
MAX_NEW=${MAX_NEW:-128}
echo "$(nvidia-smi --query-gpu=name --format=csv,noheader); model $MODEL; $REQUESTS greedy requests of $MAX_NEW tokens" | tee "$LOG"
compare() {  # compare A.json B.json WHAT
  python3 - "$1" "$2" "$3" <<'PY' | tee -a "$LOG"
import json, sys
a, b = ({q["index"]: (q["tokens"], q["token_hash"]) for q in json.load(open(p))["requests"]} for p in sys.argv[1:3])
differ = sum(a[i] != b.get(i) for i in a)
print(f"{sys.argv[3]}: {differ} of {len(a)} requests generated different tokens")
PY
}
for flags in "--batch-invariant" "--no-batch-invariant" "--batch-invariant --no-pipeline-decode"; do
  tag=${flags// /_}
  # shellcheck disable=SC2086
  "$BIN" serve --device cuda --model "$MODEL" --slots "$REQUESTS" $flags --listen 127.0.0.1:50088 \
    --metrics-listen "" > /tmp/gpu_invariance_server.log 2>&1 &
  SERVER=$!
  wait_serving 127.0.0.1:50088 120 || echo "server $flags not serving" | tee -a "$LOG"
  for c in 1 "$REQUESTS"; do
    "$BIN" loadtest --address 127.0.0.1:50088 --concurrency "$c" --requests "$REQUESTS" --temperature 0 \
      --max-new-tokens "$MAX_NEW" --json "/tmp/greedy${tag}_c$c.json" 2>&1 | grep "output tokens/s" |
      sed "s/^ */$flags concurrency $c: /" | tee -a "$LOG"
  done
  compare "/tmp/greedy${tag}_c1.json" "/tmp/greedy${tag}_c$REQUESTS.json" "$flags, alone and in the batch"
  kill -TERM $SERVER; wait $SERVER; echo "server exit $?" | tee -a "$LOG"
done
compare "/tmp/greedy--batch-invariant_c$REQUESTS.json" "/tmp/greedy--batch-invariant_--no-pipeline-decode_c$REQUESTS.json" \
  "--batch-invariant, pipelined and not, in the batch"
