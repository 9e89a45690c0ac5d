"""The real `mesaserve serve`'s Prometheus endpoint: promtool accepts it, every metric that
docs/server-interface.md documents is exported, and the counters move with a request.

Run: MESASERVE=build/cli/mesaserve python3 -m unittest -v tests/integration/test_server_metrics.py
(ctest: `ctest -L integration`). Shared set-up: server_testcase.py.
"""
import os
import re
import shutil
import subprocess
import sys
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_harness as h  # noqa: E402
import server_testcase as tc  # noqa: E402
from server_testcase import HEADS, LAYERS, ServerTestCase, request  # noqa: E402

pb, pbg = None, None


def setUpModule():
    global pb, pbg
    pb, pbg = tc.load_stubs()


# ----------------------------------------------------------------------------------------------
# 11: metrics

DOCS = os.path.join(h.SOURCE_DIR, "docs", "server-interface.md")


def documented_metrics():
    """{name: (type, [label names])} from the metrics table of docs/server-interface.md."""
    out = {}
    with open(DOCS) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 3 and cells[0].startswith("`mesa_"):
                labels = re.findall(r"`([a-z_]+)`", cells[2])
                out[cells[0].strip("`")] = (cells[1].split()[0], labels)
    return out


class MetricsTest(ServerTestCase):
    SERVER_FLAGS = ("--slots", "4")

    def test_promtool_accepts_the_metrics(self):
        self.generate(request("Hello", max_new=8))
        self.stream(request("Hello", max_new=8))
        promtool = shutil.which("promtool")
        if promtool is None:
            self.fail("promtool is not installed (Debian package prometheus; scripts/install-deps.sh)")
        body = self.server.metrics_text()
        proc = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, f"promtool: {proc.stdout}{proc.stderr}")

    def test_documented_metrics_are_exported(self):
        self.generate(request("Hello", max_new=8))
        docs = documented_metrics()
        self.assertGreaterEqual(len(docs), 15, "the metrics table of docs/server-interface.md was not found")
        m = self.server.metrics()
        for name, (kind, labels) in docs.items():
            with self.subTest(metric=name):
                self.assertEqual(m.types.get(name), kind)
                suffix = {"histogram": "_count"}.get(kind, "")
                series = m.series(name + suffix)
                self.assertTrue(series, f"{name} has no samples")
                for lab, _ in series:
                    self.assertEqual(sorted(lab), sorted(labels), f"{name} labels")
        outcomes = {lab["outcome"] for lab, _ in m.series("mesa_requests_total")}
        self.assertEqual(outcomes, {"ok", "cancelled", "deadline_exceeded", "rejected", "error"})
        les = sorted({lab["le"] for lab, _ in m.series("mesa_cg_iterations_bucket")}, key=float)
        self.assertEqual(les, ["0", "1", "2", "3", "4", "6", "8", "12", "16", "24", "32", "48", "64", "96", "128",
                               "+Inf"])
        layers = {(lab["layer"], lab["phase"]) for lab, _ in m.series("mesa_cg_iterations_count")}
        self.assertEqual(layers, {(str(l), p) for l in range(LAYERS) for p in ("prefill", "decode")})
        self.assertEqual(m.value("mesa_engine_healthy"), 1)
        (build, value), = m.series("mesa_build_info")
        self.assertEqual(value, 1)
        self.assertEqual(build["model"], "mesanet-tiny-en")
        self.assertEqual(build["backend"], "cpu")

    def test_counters_move_with_a_request(self):
        n = 20
        m0 = self.server.metrics()
        resp = self.generate(request("Counting tokens", max_new=n))
        # The engine records its last step just after the response goes out; the load gauges
        # are updated after that, so idle gauges mean a complete picture.
        self.wait_idle(timeout=1.0)
        m1 = self.server.metrics()
        p = resp.usage.prompt_tokens

        def delta(name, **labels):
            return m1.value(name, **labels) - m0.get(name, 0.0, **labels)

        self.assertEqual(delta("mesa_requests_total", outcome="ok"), 1)
        self.assertEqual(delta("mesa_generated_tokens_total"), n)
        self.assertEqual(delta("mesa_prompt_tokens_total"), p)
        self.assertEqual(delta("mesa_time_to_first_token_seconds_count"), 1)
        self.assertEqual(delta("mesa_request_duration_seconds_count"), 1)
        self.assertEqual(delta("mesa_queue_time_seconds_count"), 1)
        self.assertEqual(delta("mesa_inter_token_latency_seconds_count"), n - 1)
        self.assertEqual(delta("mesa_engine_step_duration_seconds_count", phase="decode"), n - 1)
        self.assertGreaterEqual(delta("mesa_engine_step_duration_seconds_count", phase="prefill"), 1)
        solves = iters = 0
        for layer in range(LAYERS):
            with self.subTest(layer=layer):
                self.assertEqual(delta("mesa_cg_iterations_count", layer=str(layer), phase="prefill"), p * HEADS)
                self.assertEqual(delta("mesa_cg_iterations_count", layer=str(layer), phase="decode"), (n - 1) * HEADS)
            for phase in ("prefill", "decode"):
                solves += delta("mesa_cg_iterations_count", layer=str(layer), phase=phase)
                iters += delta("mesa_cg_iterations_sum", layer=str(layer), phase=phase)
        self.assertEqual(solves, resp.cg.head_tokens)
        self.assertEqual(round(iters), resp.cg.total_iterations)
        cap = sum(delta("mesa_cg_cap_hits_total", layer=str(l)) for l in range(LAYERS))
        self.assertEqual(cap, resp.cg.cap_hits)
        self.assertEqual(sum(delta("mesa_cg_relative_residual_count", phase=ph) for ph in ("prefill", "decode")),
                         resp.cg.head_tokens)
        # A rejected request counts as rejected, nothing else.
        self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT, lambda: self.generate(request("x", top_p=2.0)))
        m2 = self.server.metrics()
        self.assertEqual(m2.value("mesa_requests_total", outcome="rejected"),
                         m1.value("mesa_requests_total", outcome="rejected") + 1)
        self.assertEqual(m2.value("mesa_requests_total", outcome="ok"), m1.value("mesa_requests_total", outcome="ok"))


if __name__ == "__main__":
    unittest.main()
