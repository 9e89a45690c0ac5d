#!/usr/bin/env bash
# Soak test: `mesaserve serve` under a closed-loop load of CONCURRENCY streams with mixed prompt
# and output lengths for MINUTES one-minute windows. After each window it records the server's
# RSS and the window's latency percentiles and errors (from `mesaserve loadtest --json`).
#   tools/soak.sh [MINUTES=10] [CONCURRENCY=64] [OUT_DIR=/tmp/mesa-soak]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10} conc=${2:-64} out=${3:-/tmp/mesa-soak}
bin=${MESASERVE:-build/cli/mesaserve}
mkdir -p "$out"
"$bin" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --slots "$conc" \
  >"$out/server.out" 2>"$out/server.err" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q "mesaserve listening" "$out/server.out" && break; sleep 0.1; done
port=$(sed -n 's/.*grpc=\([0-9]*\).*/\1/p' "$out/server.out")
echo "minute,rss_mb,requests,errors,tokens_per_s,ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms" > "$out/soak.csv"
for m in $(seq 1 "$minutes"); do
  "$bin" loadtest --address "127.0.0.1:$port" --concurrency "$conc" --duration 60 --requests 0 \
    --prompt-tokens 256 --prompt-tokens-min 8 --max-new-tokens 256 --max-new-tokens-min 16 \
    --seed "$m" --json "$out/minute_$m.json" >"$out/minute_$m.txt" 2>&1 || true
  rss=$(awk '/VmRSS/ {print $2/1024}' "/proc/$pid/status")
  python3 - "$out/minute_$m.json" "$m" "$rss" >> "$out/soak.csv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r.get("summary", r)
def g(*keys):
    for k in keys:
        if k in s: return s[k]
    return float("nan")
print(f"{sys.argv[2]},{float(sys.argv[3]):.1f},{g('requests_ok','ok')},{g('errors')},{g('output_tokens_per_s'):.1f},"
      f"{1000*g('ttft_p50_s'):.1f},{1000*g('ttft_p99_s'):.1f},{1000*g('itl_p50_s'):.2f},{1000*g('itl_p99_s'):.2f}")
PY
  tail -1 "$out/soak.csv"
done
kill -TERM "$pid"; wait "$pid"; echo "server exit code $?"
trap - EXIT
