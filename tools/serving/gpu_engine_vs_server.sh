#!/usr/bin/env bash
# On the GPU machine: the server against the engine alone on the CUDA backend (bundled model,
# closed loop, prompts of 32 random ids, 64 new tokens, temperature 1.0, adaptive CG 1e-3; the
# workload of docs/serving-benchmarks.md; MODEL overrides the model). Engine only: `mesaserve bench --device cuda
# --engine-concurrency`; server: `mesaserve serve --device cuda` driven by `mesaserve loadtest`
# in each VARIANT "D:C" (default "0:1 4:1 4:8"): D --delivery-threads (0: the engine thread
# builds and writes the messages itself), the load over at most C client connections; one
# server per D value, all up and idle while the others run; REPS rounds of every variant at
# each concurrency in CONCS. PIPELINE (true or false, default true): --pipeline-decode of the
# server and the engine alone. Needs build-server/server.tar.xz (BUILD_DIR=build-cuda
# tools/serving/pack_server.sh). Output: $OUT/gpu_engine_vs_server.txt (or $LOG_NAME) with a median table.
set -u
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
LOG="$OUTDIR/${LOG_NAME:-gpu_engine_vs_server.txt}"
. tools/serving/gpu_server_env.sh
M=${MODEL:-models/mesanet-tiny-en}
VARIANTS=${VARIANTS:-0:1 4:1 4:8}
DELIVERY=$(for v in $VARIANTS; do echo "${v%%:*}"; done | sort -un | tr '\n' ' ')
CONCS=${CONCS:-1 8 64}
REPS=${REPS:-3}
SLOTS=${SLOTS:-64}
PIPELINE=${PIPELINE:-true}
echo "$(nvidia-smi --query-gpu=name --format=csv,noheader), $(nproc) cpus; slots $SLOTS; pipeline-decode $PIPELINE; variants (delivery threads:connections): $VARIANTS" | tee "$LOG"
port=50090
declare -A ADDRESS
PIDS=()
for d in $DELIVERY; do
  port=$((port + 1))
  "$BIN" serve --device cuda --model "$M" --slots "$SLOTS" --delivery-threads "$d" --pipeline-decode="$PIPELINE" \
    --listen 127.0.0.1:$port --metrics-listen "" > "/tmp/gpu_server_d$d.log" 2>&1 &
  PIDS+=($!)
  ADDRESS[$d]=127.0.0.1:$port
done
for d in $DELIVERY; do
  wait_serving "${ADDRESS[$d]}" 120 || echo "server with $d delivery threads not serving" | tee -a "$LOG"
  "$BIN" loadtest --address "${ADDRESS[$d]}" --requests 8 > /dev/null 2>&1  # warm-up
done
for rep in $(seq "$REPS"); do
  for c in $CONCS; do
    n=$((c == 1 ? 50 : 25 * c))
    e=$("$BIN" bench --device cuda --model "$M" --batches 1 --steps 4 --prefill-tokens 32 --copy-mb 64 \
          --engine-concurrency "$c" --load-requests "$n" --pipeline-decode="$PIPELINE" 2>&1 |
        awk '/engine load/{f=1} f && $1 == "'"$c"'" {print $4; exit}')
    line="rep $rep concurrency $c engine $e"
    for v in $VARIANTS; do
      d=${v%%:*}; k=$((${v##*:} < c ? ${v##*:} : c))
      s=$("$BIN" loadtest --address "${ADDRESS[$d]}" --concurrency "$c" --connections "$k" --requests "$n" \
            --warmup "$c" --temperature 1.0 2>&1 | tee "/tmp/loadtest_${d}_${v##*:}_c$c.txt" |
          awk '/output tokens\/s/ {print $3}')
      line="$line $v $s"
    done
    echo "$line" | tee -a "$LOG"
  done
done
c=${CONCS##* }
for v in $VARIANTS; do
  echo "== last loadtest at the highest concurrency, variant $v" >> "$LOG"
  cat "/tmp/loadtest_${v%%:*}_${v##*:}_c$c.txt" >> "$LOG"
done
kill -TERM "${PIDS[@]}"
for p in "${PIDS[@]}"; do wait "$p"; echo "server exit $?" | tee -a "$LOG"; done
python3 - "$LOG" <<'PY' | tee -a "$LOG"
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.startswith('rep ')]
variants = rows[0][6::2]
print('| concurrency | engine tokens/s (runs) | ' + ' | '.join(
    f'server, {v.split(":")[0]} delivery threads, up to {v.split(":")[1]} connections (runs) | ratio'
    for v in variants) + ' |')
print('|---:|---|' + '---|---:|' * len(variants))
for c in sorted({int(r[3]) for r in rows}):
    sel = [r for r in rows if int(r[3]) == c]
    e = [float(r[5]) for r in sel]
    cells = [f'{c}', ' / '.join(f'{x:.0f}' for x in e)]
    for k, v in enumerate(variants):
        s = [float(r[7 + 2 * k]) for r in sel]
        cells += [' / '.join(f'{x:.0f}' for x in s), f'{100 * statistics.median(s) / statistics.median(e):.0f} %']
    print('| ' + ' | '.join(cells) + ' |')
PY
