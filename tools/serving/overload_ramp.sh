#!/usr/bin/env bash
# Overload ramp (reliability checklist B4): measures the server's capacity in a closed loop,
# then offers open-loop Poisson arrivals (`mesaserve loadtest --rate`) at 0.5x, 1x, 1.5x and 2x
# that capacity for SECONDS each, and prints goodput, calls shed (RESOURCE_EXHAUSTED) and how
# fast, and the accepted calls' TTFT. Pass: goodput at 2x at least 90 % of the peak, shed calls
# fail fast, accepted calls' TTFT bounded (the waiting queue, not the offered load, bounds it).
#
# usage: tools/serving/overload_ramp.sh [SERVE_FLAGS...]   e.g. --slots 8 --max-waiting 16
# Environment: MESASERVE (default build/cli/mesaserve), SECONDS_PER_LEVEL (30), NEW_TOKENS (64),
#              OUT (results folder, default /tmp/overload_ramp).
set -euo pipefail
BIN=${MESASERVE:-build/cli/mesaserve}
LEVEL_S=${SECONDS_PER_LEVEL:-30}
NEW=${NEW_TOKENS:-64}
OUTDIR=${OUT:-/tmp/overload_ramp}
mkdir -p "$OUTDIR"
PORT=${PORT:-50091}
"$BIN" serve --listen 127.0.0.1:$PORT --metrics-listen "" "$@" > "$OUTDIR/server.log" 2>&1 &
SERVER=$!
trap 'kill -KILL $SERVER 2>/dev/null || true' EXIT
"$BIN" loadtest --address 127.0.0.1:$PORT --requests 8 --concurrency 4 --connect-timeout 60 > /dev/null
slots=$(sed -n 's/.* \([0-9]*\) state slots of .*/\1/p' "$OUTDIR/server.log" | head -1)
# Capacity: every slot busy and a few calls waiting, closed loop.
"$BIN" loadtest --address 127.0.0.1:$PORT --concurrency $((2 * slots)) --duration "$LEVEL_S" \
  --max-new-tokens "$NEW" --json "$OUTDIR/capacity.json" > "$OUTDIR/capacity.txt"
cap=$(python3 -c "import json; print(json.load(open('$OUTDIR/capacity.json'))['summary']['requests_per_s'])")
echo "server flags: $*; $slots slots; capacity (closed loop, concurrency $((2 * slots))): $cap requests/s of $NEW tokens"
for f in 0.5 1 1.5 2; do
  rate=$(python3 -c "print(round($cap * $f, 3))")
  # 64 client connections: one would queue calls beyond its HTTP/2 stream limit in the client.
  "$BIN" loadtest --address 127.0.0.1:$PORT --rate "$rate" --concurrency 1024 --connections 64 --duration "$LEVEL_S" \
    --max-new-tokens "$NEW" --timeout 120 --json "$OUTDIR/rate_$f.json" > "$OUTDIR/rate_$f.txt" || true
done
kill -TERM $SERVER; wait $SERVER || true
python3 - "$OUTDIR" "$cap" <<'PY'
import json, sys
out, cap = sys.argv[1], float(sys.argv[2])
ms = lambda x: "-" if x is None else f"{x * 1e3:.0f}"
print("| offered | requests/s offered | ok | shed | other errors | goodput tokens/s | shed calls failed in p50 / p99 ms | accepted TTFT p50 / p99 ms | accepted end-to-end p99 ms |")
print("|---:|---:|---:|---:|---:|---:|---|---|---:|")
for f in ("0.5", "1", "1.5", "2"):
    r = json.load(open(f"{out}/rate_{f}.json"))
    s = r["summary"]
    shed = s["errors"].get("RESOURCE_EXHAUSTED", {}).get("count", 0)
    other = s["failed"] - shed
    fe = s["failed_e2e_s"]
    print(f"| {f}x | {r['config']['rate']:.2f} | {s['ok']} | {shed} | {other} | {s['goodput_tokens_per_s']:.0f} | "
          f"{ms(fe['p50'])} / {ms(fe['p99'])} | {ms(s['ttft_s']['p50'])} / {ms(s['ttft_s']['p99'])} | "
          f"{ms(s['e2e_s']['p99'])} |")
PY
