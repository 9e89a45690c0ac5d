#!/usr/bin/env bash
# The server-vs-engine measurement of docs/serving-benchmarks.md with the load generator on
# cores of its own: engine and server pinned to ENGINE_CPUS (--threads THREADS), the client to
# CLIENT_CPUS (SERVER_CPUS may give the server's gRPC threads more cores than the engine's
# threads), on a machine with at least 8 cores (e.g. the GPU machine: carry build-server
# from tools/serving/pack_server.sh). Same workload as on the 2-core development machine:
# bundled model, --slots 8, closed loop, prompts of 32 random ids, 64 new tokens, temperature
# 1.0, adaptive CG 1e-3. Engine-only and server runs alternate, REPS times per concurrency
# (the server stays up, idle, during the engine-only runs), so that drifts of a shared
# machine's speed hit both alike; the summary gives each run and the medians.
set -u
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
if [ -f build-server/server.tar.xz ]; then
  . tools/serving/gpu_server_env.sh  # BIN, LD_LIBRARY_PATH (a CUDA build needs the machine's cuBLAS)
else
  BIN=${MESASERVE:-build/cli/mesaserve}
fi
M=models/mesanet-tiny-en
ENGINE_CPUS=${ENGINE_CPUS:-0,1}
CLIENT_CPUS=${CLIENT_CPUS:-4-7}
THREADS=${THREADS:-2}
SERVER_CPUS=${SERVER_CPUS:-$ENGINE_CPUS}  # e.g. one core more than the engine's, for gRPC
REPS=${REPS:-3}
SERVER_ARGS=${SERVER_ARGS:-}  # extra serve flags, e.g. "--delivery-threads 0"
LOG="$OUTDIR/isolated_t${THREADS}_server${SERVER_CPUS}${SERVER_ARGS:+_$(echo "$SERVER_ARGS" | tr -c 'a-z0-9\n' '_')}.txt"
: > "$LOG"
echo "cpus: $(nproc), $(lscpu | sed -n 's/^Model name: *//p'); engine-only on $ENGINE_CPUS, server on $SERVER_CPUS ($THREADS engine threads each; serve flags: ${SERVER_ARGS:-none}), client on $CLIENT_CPUS" | tee -a "$LOG"
# shellcheck disable=SC2086  # SERVER_ARGS is a list of flags
taskset -c "$SERVER_CPUS" "$BIN" serve --device cpu --model "$M" --threads "$THREADS" --slots 8 \
  --listen 127.0.0.1:50071 --metrics-listen "" $SERVER_ARGS > /tmp/isolated_server.log 2>&1 &
SERVER=$!
taskset -c "$CLIENT_CPUS" "$BIN" loadtest --address 127.0.0.1:50071 --requests 4 --connect-timeout 60 > /dev/null 2>&1
for rep in $(seq "$REPS"); do
  for c in 1 4 8; do
    e=$(taskset -c "$ENGINE_CPUS" "$BIN" bench --model "$M" --threads "$THREADS" --batches 1 --steps 4 \
          --prefill-tokens 32 --copy-mb 64 --engine-concurrency "$c" 2>&1 | awk '/engine load/{f=1} f && $1 == "'"$c"'" {print $4; exit}')
    s=$(taskset -c "$CLIENT_CPUS" "$BIN" loadtest --address 127.0.0.1:50071 --concurrency "$c" \
          --requests $((25 * c)) --warmup "$c" --temperature 1.0 2>&1 | awk '/output tokens\/s/ {print $3}')
    echo "rep $rep concurrency $c engine $e server $s" | tee -a "$LOG"
  done
done
kill -TERM $SERVER; wait $SERVER; echo "server exit $?" | tee -a "$LOG"
python3 - "$LOG" <<'PY' | tee -a "$LOG"
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.startswith('rep ')]
print('| concurrency | engine tokens/s (runs) | server tokens/s (runs) | median ratio |')
print('|---:|---|---|---:|')
for c in sorted({int(r[3]) for r in rows}):
    e = [float(r[5]) for r in rows if int(r[3]) == c]
    s = [float(r[7]) for r in rows if int(r[3]) == c]
    print(f'| {c} | {" / ".join(f"{x:.0f}" for x in e)} | {" / ".join(f"{x:.0f}" for x in s)} | '
          f'{100 * statistics.median(s) / statistics.median(e):.0f} % |')
PY
