#!/usr/bin/env bash
# C++ client test of the gRPC server: starts the real `mesaserve serve` on free ports, drives it
# with `mesaserve loadtest` (8 concurrent streams over 2 connections, 32 requests of 16 tokens,
# then a few unary calls, then the same 8 greedy requests one at a time and 8 at once, which must
# generate the same tokens, then an open-loop run at a rate the server keeps up with), checks the
# JSON results, and expects a clean SIGTERM drain (exit 0). A second server with one slot and a
# waiting queue of one is then overloaded at --rate 400: the calls it cannot queue must fail
# fast with RESOURCE_EXHAUSTED while the ones it accepts complete.
#
# usage: loadtest_client_test.sh [MESASERVE]   (default: $MESASERVE, else build/cli/mesaserve)
# Environment: MESA_TEST_MODEL = model directory (default: the server's bundled model);
#              PYTHON = interpreter for the JSON checks (default python3).
set -euo pipefail

MESASERVE=${1:-${MESASERVE:-build/cli/mesaserve}}
PYTHON=${PYTHON:-python3}
model_flags=()
if [[ -n "${MESA_TEST_MODEL:-}" ]]; then model_flags=(--model "$MESA_TEST_MODEL"); fi

tmp=$(mktemp -d)
server_pid=""
server_name=server
cleanup() {
  # Only the server this script started, and only if it is still running.
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid" || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  echo "--- $server_name stdout" >&2; cat "$tmp/$server_name.out" >&2 || true
  echo "--- $server_name stderr (last 40 lines)" >&2; tail -n 40 "$tmp/$server_name.err" >&2 || true
  exit 1
}

# start_server NAME FLAGS...: starts `mesaserve serve` on free ports; sets server_pid and port.
start_server() {
  local name=$1
  shift
  server_name=$name
  "$MESASERVE" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 "$@" "${model_flags[@]}" \
    >"$tmp/$name.out" 2>"$tmp/$name.err" &
  server_pid=$!
  # The server prints "mesaserve listening grpc=PORT metrics=PORT" once it accepts calls.
  port=""
  for _ in $(seq 1 600); do
    port=$(sed -n 's/^mesaserve listening grpc=\([0-9]*\) metrics=.*/\1/p' "$tmp/$name.out")
    [[ -n "$port" ]] && break
    kill -0 "$server_pid" 2>/dev/null || fail "the server exited before listening"
    sleep 0.1
  done
  [[ -n "$port" ]] || fail "no 'mesaserve listening' line within 60 s"
  echo "server $name pid $server_pid listening on grpc port $port"
}

# stop_server: SIGTERM; the server drains (up to --drain-timeout, 30 s by default) and should
# exit 0.
stop_server() {
  kill -TERM "$server_pid"
  for _ in $(seq 1 450); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$server_pid" 2>/dev/null; then fail "the server did not exit within 45 s of SIGTERM"; fi
  local rc=0
  wait "$server_pid" || rc=$?
  server_pid=""
  [[ $rc -eq 0 ]] || fail "the server exited with $rc after SIGTERM (want 0)"
}

start_server server --slots 8

rc=0
"$MESASERVE" loadtest --address "127.0.0.1:$port" --concurrency 8 --requests 32 \
  --connections 2 --max-new-tokens 16 --json "$tmp/stream.json" || rc=$?
[[ $rc -eq 0 ]] || fail "loadtest (stream) exited with $rc"

rc=0
"$MESASERVE" loadtest --address "127.0.0.1:$port" --mode unary --concurrency 4 --requests 8 \
  --max-new-tokens 8 --json "$tmp/unary.json" || rc=$?
[[ $rc -eq 0 ]] || fail "loadtest (unary) exited with $rc"

# Greedy requests give the same tokens alone and in a full batch (the same 8 prompts: the
# prompts and seeds follow the request index).
for c in 1 8; do
  rc=0
  "$MESASERVE" loadtest --address "127.0.0.1:$port" --concurrency $c --requests 8 --temperature 0 \
    --max-new-tokens 24 --json "$tmp/greedy_c$c.json" || rc=$?
  [[ $rc -eq 0 ]] || fail "loadtest (greedy, concurrency $c) exited with $rc"
done

# Open loop at 20 requests/s, which 8 slots keep up with: every call starts at its arrival time.
rc=0
# 48 client threads: enough for calls of up to 2.4 s (sanitizer builds are much slower).
"$MESASERVE" loadtest --address "127.0.0.1:$port" --rate 20 --concurrency 48 --requests 24 \
  --max-new-tokens 8 --json "$tmp/open.json" || rc=$?
[[ $rc -eq 0 ]] || fail "loadtest (open loop) exited with $rc"

"$PYTHON" - "$tmp/stream.json" "$tmp/unary.json" "$tmp/greedy_c1.json" "$tmp/greedy_c8.json" "$tmp/open.json" <<'PY' || fail "the loadtest JSON does not show what was asked for"
import json, sys

def check(path, requests, tokens, stream):
    with open(path) as f:
        r = json.load(f)
    s = r["summary"]
    assert s["ok"] == requests and s["failed"] == 0, (path, s["ok"], s["failed"], s["errors"])
    assert len(r["requests"]) == requests, (path, len(r["requests"]))
    assert s["output_tokens"] == requests * tokens, (path, s["output_tokens"])
    for q in r["requests"]:
        assert q["ok"] and q["code"] == "OK", q
        assert q["tokens"] == tokens and q["completion_tokens"] == tokens, q
        assert q["finish_reason"] == "FINISH_REASON_LENGTH", q
        assert q["prompt_tokens"] == 32, q
        assert q["cg_head_tokens"] > 0 and q["cg_iterations"] >= q["cg_head_tokens"], q
        if stream:
            assert q["ttft_s"] is not None and 0 < q["ttft_s"] <= q["e2e_s"], q
            # Every token after the first has a gap, whether or not messages carry several.
            assert len(q["itl_s"]) == tokens - 1, q
    assert s["requests_per_s"] > 0 and s["output_tokens_per_s"] > 0, s
    if stream:
        assert s["ttft_s"]["n"] == requests and s["itl_s"]["n"] == requests * (tokens - 1), s

check(sys.argv[1], 32, 16, True)
check(sys.argv[2], 8, 8, False)
alone, batched = ([(q["index"], q["tokens"], q["token_hash"]) for q in json.load(open(p))["requests"]]
                  for p in sys.argv[3:5])
assert len(alone) == 8 and all(t == 24 for _, t, _ in alone), alone
assert len({h for _, _, h in alone}) > 1, ("different prompts should give different tokens", alone)
assert alone == batched, ("greedy tokens changed with the batch", alone, batched)

check(sys.argv[5], 24, 8, True)
r = json.load(open(sys.argv[5]))
assert r["config"]["rate"] == 20, r["config"]
arrivals = sorted(q["arrival_s"] for q in r["requests"])
assert arrivals[0] == 0 and len(set(arrivals)) == 24, arrivals
# 23 exponential gaps of mean 50 ms: about 1.15 s (seeded, so the same in every run).
assert 0.3 < arrivals[-1] < 4.0, arrivals
for q in r["requests"]:
    # Started at its arrival time: a client thread was free (late_s: the scheduler's wake-up at
    # most), and the call was sent on time.
    assert q["late_s"] < 0.05 and q["arrival_s"] - 0.001 <= q["start_s"] <= q["arrival_s"] + 0.5, q
print("loadtest JSON checks passed")
PY

stop_server

# Overload: one slot, a waiting queue of one, 40 calls of 64 tokens arriving at 400/s. The
# server sheds what it cannot queue with RESOURCE_EXHAUSTED at once; what it accepts completes.
start_server small --slots 1 --max-waiting 1
rc=0
"$MESASERVE" loadtest --address "127.0.0.1:$port" --rate 400 --concurrency 40 --requests 40 \
  --max-new-tokens 64 --json "$tmp/overload.json" > "$tmp/overload.txt" || rc=$?
[[ $rc -eq 1 ]] || fail "loadtest (overload) exited with $rc, want 1 (calls shed)"
"$PYTHON" - "$tmp/overload.json" <<'PY' || fail "the overloaded server did not shed calls fast"
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]
shed = s["errors"].get("RESOURCE_EXHAUSTED", {}).get("count", 0)
assert set(s["errors"]) <= {"RESOURCE_EXHAUSTED"}, s["errors"]
assert shed >= 20 and s["ok"] >= 1 and s["ok"] + shed == 40, s
assert "waiting queue is full" in s["errors"]["RESOURCE_EXHAUSTED"]["first_message"], s["errors"]
# Shed calls fail without waiting for a slot: well under one accepted call's duration.
assert s["failed_e2e_s"]["p50"] < 0.25 * s["e2e_s"]["p50"], (s["failed_e2e_s"], s["e2e_s"])
for q in r["requests"]:
    if q["ok"]:
        assert q["tokens"] == 64, q
assert s["goodput_tokens_per_s"] > 0 and s["goodput_tokens_per_s"] <= s["output_tokens_per_s"], s
print(f"overload: {shed} of 40 shed, failed in p50 {s['failed_e2e_s']['p50'] * 1e3:.2f} ms; "
      f"{s['ok']} completed in p50 {s['e2e_s']['p50'] * 1e3:.1f} ms")
PY
stop_server
echo "PASS"
