#!/usr/bin/env bash
# C++ client test of the gRPC server: starts the real `mesaserve serve` on free ports, drives it
# with `mesaserve loadtest` (8 concurrent streams over 2 connections, 32 requests of 16 tokens,
# then a few unary calls, then the same 8 greedy requests one at a time and 8 at once, which must
# generate the same tokens), checks the JSON results, and expects a clean SIGTERM drain (exit 0).
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
cleanup() {
  # Only the server this script started, and only if it is still running.
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid" || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  echo "--- server stdout" >&2; cat "$tmp/server.out" >&2 || true
  echo "--- server stderr (last 40 lines)" >&2; tail -n 40 "$tmp/server.err" >&2 || true
  exit 1
}

"$MESASERVE" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --slots 8 "${model_flags[@]}" \
  >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!

# The server prints "mesaserve listening grpc=PORT metrics=PORT" once it accepts calls.
port=""
for _ in $(seq 1 600); do
  port=$(sed -n 's/^mesaserve listening grpc=\([0-9]*\) metrics=.*/\1/p' "$tmp/server.out")
  [[ -n "$port" ]] && break
  kill -0 "$server_pid" 2>/dev/null || fail "the server exited before listening"
  sleep 0.1
done
[[ -n "$port" ]] || fail "no 'mesaserve listening' line within 60 s"
echo "server pid $server_pid listening on grpc port $port"

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

"$PYTHON" - "$tmp/stream.json" "$tmp/unary.json" "$tmp/greedy_c1.json" "$tmp/greedy_c8.json" <<'PY' || fail "the loadtest JSON does not show what was asked for"
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
print("loadtest JSON checks passed")
PY

kill -TERM "$server_pid"
# The server drains (up to --drain-timeout, 30 s by default) and should exit 0.
for _ in $(seq 1 450); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$server_pid" 2>/dev/null; then fail "the server did not exit within 45 s of SIGTERM"; fi
rc=0
wait "$server_pid" || rc=$?
server_pid=""
[[ $rc -eq 0 ]] || fail "the server exited with $rc after SIGTERM (want 0)"
echo "PASS"
