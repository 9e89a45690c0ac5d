#!/usr/bin/env bash
# Soak test (docs/reliability.md): `mesaserve serve` under a closed-loop load of CONCURRENCY
# streams with mixed prompt and output lengths, in one-minute windows of `mesaserve loadtest`.
# After each window it records the server's RSS, the window's throughput, latency percentiles
# and errors; at the end it checks the server is idle and leak-free through its own metrics
# (no slot in use, nothing running or waiting, no request ended in error), then drains it
# with SIGTERM.
#   tools/soak.sh [MINUTES=10] [CONCURRENCY=64] [OUT_DIR=/tmp/mesa-soak]
# Exit code 0 only if every window had zero errors and the final checks hold.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10} conc=${2:-64} out=${3:-/tmp/mesa-soak}
bin=${MESASERVE:-build/cli/mesaserve}
mkdir -p "$out"
"$bin" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --slots "$conc" \
  --max-waiting "$((4 * conc))" >"$out/server.out" 2>"$out/server.err" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q "mesaserve listening" "$out/server.out" && break; sleep 0.1; done
port=$(sed -n 's/.*grpc=\([0-9]*\).*/\1/p' "$out/server.out")
mport=$(sed -n 's/.*metrics=\([0-9]*\).*/\1/p' "$out/server.out")
echo "minute,rss_mb,requests_ok,failed,output_tokens_per_s,ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms,e2e_p99_s" \
  > "$out/soak.csv"
status=0
for m in $(seq 1 "$minutes"); do
  # Prompts of 8..256 random token ids, 16..256 new tokens, one sampling seed per request.
  "$bin" loadtest --address "127.0.0.1:$port" --concurrency "$conc" --duration 60 --requests 0 \
    --prompt-tokens 256 --prompt-tokens-min 8 --max-new-tokens 256 --max-new-tokens-min 16 \
    --seed "$m" --json "$out/minute_$m.json" >"$out/minute_$m.txt" 2>&1 || status=1
  rss=$(awk '/VmRSS/ {print $2/1024}' "/proc/$pid/status")
  python3 - "$out/minute_$m.json" "$m" "$rss" >> "$out/soak.csv" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
ms = lambda d, k: 1000 * (d[k] or float("nan"))
print(f"{sys.argv[2]},{float(sys.argv[3]):.1f},{s['ok']},{s['failed']},{s['output_tokens_per_s']:.1f},"
      f"{ms(s['ttft_s'], 'p50'):.1f},{ms(s['ttft_s'], 'p99'):.1f},{ms(s['itl_s'], 'p50'):.2f},"
      f"{ms(s['itl_s'], 'p99'):.2f},{s['e2e_s']['p99']:.2f}")
PY
  tail -1 "$out/soak.csv"
done
# Global invariant at quiescence, from the server's own metrics.
sleep 1
curl -sf "http://127.0.0.1:$mport/metrics" > "$out/metrics_end.txt"
python3 - "$out/metrics_end.txt" <<'PY' || status=1
import re, sys
text = open(sys.argv[1]).read()
def value(name, labels=""):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
checks = {"mesa_state_slots_used": value("mesa_state_slots_used"),
          "mesa_requests_running": value("mesa_requests_running"),
          "mesa_requests_waiting": value("mesa_requests_waiting"),
          'mesa_requests_total{outcome="error"}': value("mesa_requests_total", 'outcome="error"')}
print("requests by outcome:", {o: value("mesa_requests_total", f'outcome="{o}"')
                               for o in re.findall(r'mesa_requests_total\{[^}]*outcome="([a-z_]+)"', text)})
for k, v in checks.items():
    print(f"{k} = {v:g}")
sys.exit(1 if any(checks.values()) else 0)
PY
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
echo "server exit code $rc"
[ "$rc" -eq 0 ] || status=1
trap - EXIT
exit $status
