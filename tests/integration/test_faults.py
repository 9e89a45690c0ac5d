"""Faults against the real server: failed engine steps, a poisoned runner, 10,000 requests with
cancellations at random points, and SIGTERM under load. Engine faults are injected with the
test-only MESA_FAULT_INJECTION hook of `mesaserve serve`.
"""
import os
import random
import sys
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_harness import ServerProcess, health_check, stubs  # noqa: E402

pb, rpc = stubs()


def request(max_new, prompt="The history of the", temperature=0.0):
    return pb.GenerateRequest(text=prompt, sampling=pb.SamplingParams(temperature=temperature),
                              stopping=pb.StoppingCriteria(max_new_tokens=max_new, ignore_eos=True))


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class FaultTest(unittest.TestCase):
    def serve(self, *flags, env=None):
        server = ServerProcess(*flags, env=env).start()
        self.addCleanup(server.stop)
        return server

    def wait_gauge(self, server, name, value, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.metrics().value(name) == value:
                return
            time.sleep(0.05)
        self.fail(f"{name} did not reach {value}: {server.metrics().value(name)}\n{server.log()}")

    def test_failed_step_fails_only_its_requests(self):
        # The 5th decode call fails. A request that is still waiting for its slot (slots 1) is
        # not in that step and must complete; so must a request sent afterwards.
        server = self.serve("--slots", "1", env={"MESA_FAULT_INJECTION": "decode_fail_at=5"})
        stub = rpc.GenerationStub(server.shared_channel())
        first = stub.Generate.future(request(max_new=20), timeout=60)
        time.sleep(0.05)
        second = stub.Generate.future(request(max_new=6), timeout=60)
        with self.assertRaises(grpc.RpcError) as ctx:
            first.result()
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INTERNAL, ctx.exception.details())
        self.assertIn("injected fault", ctx.exception.details())
        self.assertEqual(second.result().usage.completion_tokens, 6)
        self.assertEqual(stub.Generate(request(max_new=4), timeout=30).usage.completion_tokens, 4)
        self.assertEqual(health_check(server.shared_channel()), 1)  # still SERVING
        self.wait_gauge(server, "mesa_state_slots_used", 0)
        self.assertEqual(server.metrics().value("mesa_requests_total", outcome="error"), 1)

    def test_poisoned_runner_fails_everything_and_readiness_drops(self):
        # A poisoned runner (a sticky device fault) cannot serve again: requests fail UNAVAILABLE,
        # readiness drops, and the process exits with status 3 within 10 s (5 s by default) so
        # that its supervisor restarts it.
        server = self.serve("--slots", "2", env={"MESA_FAULT_INJECTION": "poison_at=8"})
        stub = rpc.GenerationStub(server.shared_channel())
        with self.assertRaises(grpc.RpcError) as ctx:
            list(stub.GenerateStream(request(max_new=100), timeout=60))
        failed_at = time.monotonic()
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAVAILABLE, ctx.exception.details())
        self.assert_failed_and_not_serving(server, stub)
        code = server.wait(max(0.0, failed_at + 10 - time.monotonic()))
        self.assertEqual(code, 3, "the server did not exit with status 3 within 10 s of the failure")
        self.assertIn("exiting with status 3", server.log())

    def test_poisoned_runner_with_fatal_exit_off_stays_up_not_serving(self):
        server = self.serve("--slots", "2", "--fatal-exit-after", "0",
                            env={"MESA_FAULT_INJECTION": "poison_at=8"})
        stub = rpc.GenerationStub(server.shared_channel())
        with self.assertRaises(grpc.RpcError) as ctx:
            list(stub.GenerateStream(request(max_new=100), timeout=60))
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAVAILABLE, ctx.exception.details())
        self.assert_failed_and_not_serving(server, stub)
        self.assertIsNone(server.wait(1.5))  # still running
        self.assert_failed_and_not_serving(server, stub)
        self.assertEqual(server.stop(), 0)

    def assert_failed_and_not_serving(self, server, stub):
        deadline = time.monotonic() + 5
        while health_check(server.shared_channel()) == 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(health_check(server.shared_channel()), 2)  # NOT_SERVING
        with self.assertRaises(grpc.RpcError) as ctx:
            stub.Generate(request(max_new=2), timeout=10)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("engine has failed", ctx.exception.details())
        self.assertEqual(server.metrics().value("mesa_engine_healthy"), 0)

    def test_ten_thousand_requests_with_random_cancellations_leak_nothing(self):
        server = self.serve("--slots", "16", "--max-waiting", "256")
        channels = [server.channel() for _ in range(4)]
        self.addCleanup(lambda: [c.close() for c in channels])
        stubs_ = [rpc.GenerationStub(c) for c in channels]
        counts = {"ok": 0, "cancelled": 0}
        lock = threading.Lock()

        def one(i):
            rng = random.Random(i)
            stub = stubs_[i % len(stubs_)]
            max_new = rng.randint(1, 12)
            call = stub.GenerateStream(request(max_new=max_new, prompt="word " * rng.randint(1, 40),
                                               temperature=1.0), timeout=60)
            stop_after = rng.randint(0, max_new) if rng.random() < 0.5 else None
            got = 0
            try:
                for m in call:
                    got += len(m.token_ids)
                    if stop_after is not None and got >= stop_after:
                        call.cancel()
                        break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED:
                    raise
            with lock:
                counts["cancelled" if stop_after is not None and got < max_new else "ok"] += 1

        def run(start, n):
            with ThreadPoolExecutor(max_workers=32) as pool:
                list(pool.map(one, range(start, start + n)))

        # MESA_FAULT_TEST_REQUESTS scales the run down for sanitizer builds (scripts/sanitize.sh),
        # where 10,000 requests take longer than the test's timeout; ASan's RSS is not comparable.
        total = int(os.environ.get("MESA_FAULT_TEST_REQUESTS", "10000"))
        run(0, 500)  # warm up allocators before the baseline
        self.wait_gauge(server, "mesa_state_slots_used", 0)
        base = rss_kb(server.proc.pid)
        run(500, total)
        self.wait_gauge(server, "mesa_state_slots_used", 0)
        self.wait_gauge(server, "mesa_requests_running", 0)
        self.wait_gauge(server, "mesa_requests_waiting", 0)
        growth_mb = (rss_kb(server.proc.pid) - base) / 1024
        print(f"\n{total} requests: {counts}, server RSS {base / 1024:.1f} MB -> growth {growth_mb:+.1f} MB",
              file=sys.stderr)
        self.assertGreater(counts["cancelled"], total // 10)
        if total >= 10000:
            self.assertLess(growth_mb, 32, "server memory grew")
        self.assertEqual(server.metrics().value("mesa_requests_total", outcome="error"), 0)

    def test_sigterm_under_load_drains_in_time(self):
        server = self.serve("--slots", "16", "--drain-timeout", "5")
        stub = rpc.GenerationStub(server.shared_channel())
        results = []

        def stream(i):
            try:
                n = sum(len(m.token_ids) for m in stub.GenerateStream(request(max_new=30 + i), timeout=60))
                results.append(("ok", n))
            except grpc.RpcError as e:
                results.append((e.code(), e.details()))

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        server.terminate()
        code = server.wait(15)
        for t in threads:
            t.join(30)
        self.assertEqual(code, 0, server.log())
        self.assertLess(time.monotonic() - t0, 5 + 6)
        self.assertEqual(len(results), 32)
        for r in results:
            self.assertIn(r[0], ("ok", grpc.StatusCode.UNAVAILABLE), r)


if __name__ == "__main__":
    unittest.main()
