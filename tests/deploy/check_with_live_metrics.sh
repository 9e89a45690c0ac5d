#!/usr/bin/env bash
# Runs every deployment check, with the metric names of the dashboard and alert rules checked
# against the /metrics endpoint of a real running server.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MESASERVE:?set MESASERVE to the mesaserve binary}"
work=$(mktemp -d)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
OMP_WAIT_POLICY=passive "$MESASERVE" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --slots 2 \
  >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 1 300); do
  grep -q "mesaserve listening" "$work/out" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/err"; exit 1; }
  sleep 0.1
done
metrics_port=$(sed -n 's/.*metrics=\([0-9]*\).*/\1/p' "$work/out")
grpc_port=$(sed -n 's/.*grpc=\([0-9]*\).*/\1/p' "$work/out")
[ -n "$metrics_port" ] || { echo "server did not report its ports"; cat "$work/err"; exit 1; }
"$MESASERVE" health --address "127.0.0.1:$grpc_port"
# One request so the histograms have samples too.
python3 scripts/mesa_client.py --address "127.0.0.1:$grpc_port" --max-new-tokens 4 --seed 1 "Hi" >/dev/null
python3 - "$metrics_port" "$work/metrics.txt" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read()
open(sys.argv[2], "wb").write(body)
PY
kill -TERM "$pid"
wait "$pid"
pid=""
bash scripts/check-deploy.sh "$work/metrics.txt"
