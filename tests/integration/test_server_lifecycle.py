"""The real `mesaserve serve` under the conditions a serving engine must survive: cancellation
and deadlines, 64 concurrent streams (batch invariance), a full waiting queue, a slow reader,
and the SIGTERM drain. Every class ends with all slots free and a clean exit.

Run: MESASERVE=build/cli/mesaserve python3 -m unittest -v tests/integration/test_server_lifecycle.py
(ctest: `ctest -L integration`). Shared set-up: server_testcase.py.
"""
import os
import subprocess
import sys
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_harness as h  # noqa: E402
import server_testcase as tc  # noqa: E402
from server_testcase import MESASERVE, RPC_TIMEOUT, ServerTestCase, request, wait_until  # noqa: E402

pb, pbg = None, None


def setUpModule():
    global pb, pbg
    pb, pbg = tc.load_stubs()


# ----------------------------------------------------------------------------------------------
# 3, 4: cancellation and deadlines

class CancellationAndDeadlineTest(ServerTestCase):
    SERVER_FLAGS = ("--slots", "4")
    LONG = 4000  # ~10 s of decoding: never finishes within these tests

    def outcome(self, name):
        return self.server.metrics().value("mesa_requests_total", outcome=name)

    def wait_freed(self, outcomes, expected, timeout=1.0):
        """Waits until the slot is free and the outcome counters (summed) reach `expected`."""
        outcomes = (outcomes,) if isinstance(outcomes, str) else outcomes

        def done():
            m = self.server.metrics()
            return (m.value("mesa_state_slots_used") == 0 and m.value("mesa_requests_running") == 0
                    and sum(m.value("mesa_requests_total", outcome=o) for o in outcomes) == expected)
        ok = wait_until(done, timeout)
        self.assertTrue(ok, f"within {timeout} s: {self._load()}, {outcomes} = "
                            f"{[self.outcome(o) for o in outcomes]} (expected {expected} in all)")

    # A request whose deadline passes ends on the server as cancelled or deadline_exceeded (see
    # test_deadline_is_counted_as_deadline_exceeded for which one it should be).
    ENDED_BY_DEADLINE = ("deadline_exceeded", "cancelled")

    def ended_by_deadline(self):
        return sum(self.outcome(o) for o in self.ENDED_BY_DEADLINE)

    def test_cancelled_stream_frees_its_slot(self):
        before = self.outcome("cancelled")
        call = self.stub.GenerateStream(request("Tell me a story", max_new=self.LONG), timeout=RPC_TIMEOUT)
        for _ in range(3):
            next(call)
        self.assertEqual(self.server.metrics().value("mesa_state_slots_used"), 1)
        call.cancel()
        self.wait_freed("cancelled", before + 1)
        with self.assertRaises(grpc.RpcError) as cm:
            for _ in call:
                pass
        self.assertEqual(cm.exception.code(), grpc.StatusCode.CANCELLED)
        # Nothing generates any more.
        g0 = self.server.metrics().value("mesa_generated_tokens_total")
        time.sleep(0.2)
        self.assertEqual(self.server.metrics().value("mesa_generated_tokens_total"), g0)

    def test_cancelled_unary_call_frees_its_slot(self):
        before = self.outcome("cancelled")
        future = self.stub.Generate.future(request("Tell me a story", max_new=self.LONG), timeout=RPC_TIMEOUT)
        running = wait_until(lambda: self.server.metrics().value("mesa_state_slots_used") == 1, 5.0)
        self.assertTrue(running)
        future.cancel()
        self.wait_freed("cancelled", before + 1)
        self.assertTrue(future.cancelled())

    def test_unary_deadline(self):
        before = self.ended_by_deadline()
        t0 = time.monotonic()
        self.assertRpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                            lambda: self.generate(request("Tell me a story", max_new=self.LONG), timeout=0.5))
        self.assertLess(time.monotonic() - t0, 3.0)
        self.wait_freed(self.ENDED_BY_DEADLINE, before + 1)

    def test_deadline_is_counted_as_deadline_exceeded(self):
        # docs/server-interface.md: mesa_requests_total{outcome="deadline_exceeded"}. gRPC reports
        # a passed deadline to the server as a cancellation; the engine must still count it as a
        # deadline. Three in a row, so that a lucky race does not pass it.
        before = self.outcome("deadline_exceeded")
        for _ in range(3):
            self.assertRpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                lambda: self.generate(request("Tell me a story", max_new=self.LONG), timeout=0.3))
        self.wait_freed("deadline_exceeded", before + 3)

    def test_stream_deadline(self):
        before = self.ended_by_deadline()
        got = []
        t0 = time.monotonic()

        def read():
            for m in self.stub.GenerateStream(request("Tell me a story", max_new=self.LONG), timeout=0.5):
                got.append(m)

        self.assertRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, read)
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertGreater(len(got), 0)
        self.assertLess(len(got), self.LONG)
        self.wait_freed(self.ENDED_BY_DEADLINE, before + 1)


# ----------------------------------------------------------------------------------------------
# 5: many concurrent streams, batch invariance

class ConcurrencyTest(ServerTestCase):
    # 48 of the 64 streams wait for a slot: more than the default queue (twice the slots).
    SERVER_FLAGS = ("--slots", "16", "--max-waiting", "64")
    STREAMS = 64

    def spec(self, i):
        """Request i: 0 is greedy, the rest sampled with their own seed; varied lengths."""
        if i == 0:
            return request("The license grants", max_new=48)
        return request(f"Request {i}: the weather in town", max_new=8 + (i % 5) * 6, temperature=0.8, seed=i)

    def test_64_concurrent_streams_complete_and_match_solo_runs(self):
        solo = {i: self.stream_text(self.stream(self.spec(i)))[1] for i in (0, 1, 7)}
        results, errors = {}, {}
        barrier = threading.Barrier(self.STREAMS)

        def run(i):
            try:
                barrier.wait(timeout=30)
                msgs = self.stream(self.spec(i), timeout=120)
                results[i] = msgs
            except Exception as e:  # noqa: BLE001 - reported below
                errors[i] = repr(e)

        t0 = time.monotonic()
        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(self.STREAMS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        elapsed = time.monotonic() - t0
        self.assertFalse(any(t.is_alive() for t in threads), "streams still running after 180 s")
        self.assertEqual(errors, {})
        for i in range(self.STREAMS):
            msgs = results[i]
            expected = self.spec(i).stopping.max_new_tokens
            _, ids = self.stream_text(msgs)
            self.assertEqual(len(ids), expected, f"stream {i}")
            self.assertEqual(msgs[-1].finish_reason, pb.FINISH_REASON_LENGTH, f"stream {i}")
            self.assertEqual(msgs[-1].usage.completion_tokens, expected, f"stream {i}")
        # Batch invariance: the same tokens in a crowd as alone.
        for i, ids in solo.items():
            self.assertEqual(self.stream_text(results[i])[1], ids, f"request {i} differs when batched")
        m = self.server.metrics()
        self.assertGreater(m.value("mesa_decode_batch_size_sum") / m.value("mesa_decode_batch_size_count"), 2.0)
        self.assertLess(elapsed, 120)


# ----------------------------------------------------------------------------------------------
# 7: bounded waiting queue

class QueueFullTest(ServerTestCase):
    SERVER_FLAGS = ("--slots", "1", "--max-waiting", "2")

    def test_full_queue_rejects_with_resource_exhausted(self):
        self.assertEqual(self.info.limits.max_waiting_requests, 2)
        before = self.server.metrics().value("mesa_requests_total", outcome="rejected")
        n, tokens = 8, 200
        futures = [self.stub.Generate.future(request(f"Story {i}", max_new=tokens), timeout=RPC_TIMEOUT)
                   for i in range(n)]
        done, rejected = [], []
        for f in futures:
            try:
                done.append(f.result(timeout=RPC_TIMEOUT))
            except grpc.RpcError as e:
                rejected.append(e)
        for e in rejected:
            self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, e.details())
            self.assertIn("limit is 2", e.details())
            self.assertIn("waiting queue is full", e.details())
        # One running and two waiting fit (two when both arrive before the first is admitted).
        self.assertIn(len(done), (2, 3))
        self.assertEqual(len(rejected), n - len(done))
        for r in done:
            self.assertEqual(r.usage.completion_tokens, tokens)
            self.assertEqual(r.finish_reason, pb.FINISH_REASON_LENGTH)
        self.assertEqual(self.server.metrics().value("mesa_requests_total", outcome="rejected"), before + len(rejected))

    def test_stream_is_rejected_too_and_priority_orders_the_queue(self):
        blocker = self.stub.Generate.future(request("Blocker", max_new=300), timeout=RPC_TIMEOUT)
        self.assertTrue(wait_until(lambda: self.server.metrics().value("mesa_state_slots_used") == 1, 5.0))
        finished = []
        low = self.stub.Generate.future(request("Low", max_new=5, priority=0), timeout=RPC_TIMEOUT)
        low.add_done_callback(lambda f: finished.append("low"))
        self.assertTrue(wait_until(lambda: self.server.metrics().value("mesa_requests_waiting") == 1, 5.0))
        high = self.stub.Generate.future(request("High", max_new=5, priority=5), timeout=RPC_TIMEOUT)
        high.add_done_callback(lambda f: finished.append("high"))
        self.assertTrue(wait_until(lambda: self.server.metrics().value("mesa_requests_waiting") == 2, 5.0))
        self.assertRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: self.stream(request("Third", max_new=5)),
                            "limit is 2")
        for f in (blocker, low, high):
            self.assertEqual(f.result(timeout=RPC_TIMEOUT).finish_reason, pb.FINISH_REASON_LENGTH)
        self.assertTrue(wait_until(lambda: len(finished) == 2, 5.0))
        self.assertEqual(finished, ["high", "low"])


    def test_waiting_requests_leave_on_deadline_and_cancel(self):
        blocker = self.stub.Generate.future(request("Blocker", max_new=1000), timeout=RPC_TIMEOUT)
        self.assertTrue(wait_until(lambda: self.server.metrics().value("mesa_state_slots_used") == 1, 5.0))
        m0 = self.server.metrics()
        waiting = lambda: self.server.metrics().value("mesa_requests_waiting")  # noqa: E731
        # The deadline passes while the request waits for the slot.
        self.assertRpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                            lambda: self.generate(request("Waiter", max_new=5), timeout=0.3))
        self.assertTrue(wait_until(lambda: waiting() == 0, 1.0), "an expired waiter still waits")
        # The client cancels while the request waits.
        f = self.stub.Generate.future(request("Waiter 2", max_new=5), timeout=RPC_TIMEOUT)
        self.assertTrue(wait_until(lambda: waiting() == 1, 5.0))
        f.cancel()
        self.assertTrue(wait_until(lambda: waiting() == 0, 1.0), "a cancelled waiter still waits")
        self.assertFalse(blocker.done(), "the blocker finished early; the waiters may have run")
        self.assertEqual(blocker.result(timeout=RPC_TIMEOUT).usage.completion_tokens, 1000)
        m1 = self.server.metrics()
        ended = sum(m1.value("mesa_requests_total", outcome=o) - m0.value("mesa_requests_total", outcome=o)
                    for o in ("cancelled", "deadline_exceeded"))
        self.assertEqual(ended, 2)
        self.assertEqual(m1.value("mesa_requests_total", outcome="ok") - m0.value("mesa_requests_total", outcome="ok"), 1)


# ----------------------------------------------------------------------------------------------
# 8: a slow reader pauses only itself

class SlowReaderTest(ServerTestCase):
    SERVER_FLAGS = ("--slots", "4", "--stream-buffer", "4")

    def test_slow_reader_does_not_slow_others(self):
        # Separate connections without BDP probing, so that the unread stream fills its HTTP/2
        # window (~64 KB) and the server sees the backlog; big messages (20 top logprobs each)
        # get there after a few hundred tokens.
        opts = {"grpc.http2.bdp_probe": 0, "grpc.use_local_subchannel_pool": 1}
        slow_ch, fast_ch = self.server.channel(**opts), self.server.channel(**opts)
        self.addCleanup(slow_ch.close)
        self.addCleanup(fast_ch.close)
        slow_stub, fast_stub = pbg.GenerationStub(slow_ch), pbg.GenerationStub(fast_ch)
        fast_req = request("A quick one", max_new=300)
        t0 = time.monotonic()
        self.assertEqual(len(self.stream_text(self.stream(fast_req, stub=fast_stub))[1]), 300)
        alone = time.monotonic() - t0

        n_slow = 1500
        slow = slow_stub.GenerateStream(request("A long one", max_new=n_slow, top_logprobs=20), timeout=RPC_TIMEOUT)
        first = next(slow)  # the slow stream is running; now it stops reading
        t_unread = time.monotonic()
        t0 = time.monotonic()
        fast_ids = self.stream_text(self.stream(fast_req, stub=fast_stub))[1]
        beside = time.monotonic() - t0
        self.assertEqual(len(fast_ids), 300)
        self.assertLess(beside, 2.5 * alone + 0.5, f"alone {alone:.2f} s, beside a paused reader {beside:.2f} s")

        # Still not reading: the slow request holds its slot but generates nothing.
        time.sleep(max(0.0, 2.0 - (time.monotonic() - t_unread)))
        m0 = self.server.metrics()
        time.sleep(0.5)
        m1 = self.server.metrics()
        self.assertEqual(m1.value("mesa_requests_running"), 1)
        self.assertEqual(m1.value("mesa_generated_tokens_total"), m0.value("mesa_generated_tokens_total"),
                         "an unread stream kept generating")
        self.assertLess(m1.value("mesa_generated_tokens_total"), 300 * 2 + n_slow)

        # Reading resumes: it completes.
        msgs = [first, *slow]
        _, ids = self.stream_text(msgs)
        self.assertEqual(len(ids), n_slow)
        self.assertEqual(msgs[-1].finish_reason, pb.FINISH_REASON_LENGTH)
        self.assertTrue(all(len(lp.top) == 20 for m in msgs for lp in m.logprobs))


    def test_cancelling_a_paused_stream_frees_its_slot(self):
        ch = self.server.channel(**{"grpc.http2.bdp_probe": 0, "grpc.use_local_subchannel_pool": 1})
        self.addCleanup(ch.close)
        call = pbg.GenerationStub(ch).GenerateStream(request("Unread", max_new=3000, top_logprobs=20),
                                                      timeout=RPC_TIMEOUT)
        next(call)
        generated = lambda: self.server.metrics().value("mesa_generated_tokens_total")  # noqa: E731
        last = [generated()]

        def paused():
            time.sleep(0.3)
            now = generated()
            stable, last[0] = now == last[0], now
            return stable

        self.assertTrue(wait_until(paused, 10.0, interval=0), "the unread stream never paused")
        self.assertEqual(self.server.metrics().value("mesa_state_slots_used"), 1)
        call.cancel()
        self.wait_idle(timeout=1.0)


# ----------------------------------------------------------------------------------------------
# 9: SIGTERM drain

class DrainTest(ServerTestCase):
    SERVER_FLAGS = None  # each test starts (and ends) its own server

    def start_server(self, *flags):
        server = h.ServerProcess(*flags)
        self.addCleanup(server.cleanup)
        self._servers_for_log.append(server)
        server.start()
        return server

    def read_in_background(self, stub, req):
        state = {"msgs": [], "error": None, "first": threading.Event(), "done": threading.Event()}

        def run():
            try:
                for m in stub.GenerateStream(req, timeout=RPC_TIMEOUT):
                    state["msgs"].append(m)
                    state["first"].set()
            except grpc.RpcError as e:
                state["error"] = e
            finally:
                state["first"].set()
                state["done"].set()

        threading.Thread(target=run, daemon=True).start()
        self.assertTrue(state["first"].wait(30), "no first message")
        return state

    def test_drain_finishes_running_streams_and_refuses_new_ones(self):
        drain = 30
        server = self.start_server("--slots", "2", "--drain-timeout", str(drain))
        ch = server.shared_channel()
        stub = pbg.GenerationStub(ch)
        n = 1500  # ~4 s of decoding
        state = self.read_in_background(stub, request("A long story", max_new=n))
        self.assertIsNone(state["error"])
        t0 = time.monotonic()
        server.terminate()
        # Readiness goes away at once; new requests are refused while the stream runs on.
        status = wait_until(lambda: h.health_check(ch) == h.NOT_SERVING, 2.0)
        self.assertTrue(status, "health still SERVING 2 s after SIGTERM")
        proc = subprocess.run([MESASERVE, "health", "--address", server.address], capture_output=True, text=True,
                              timeout=30)
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertFalse(state["done"].is_set(), "the stream ended before the checks; make it longer")
        self.assertRpcError(grpc.StatusCode.UNAVAILABLE, lambda: self.generate(request("New", max_new=4), stub=stub,
                                                                               timeout=10), "draining")
        self.assertRpcError(grpc.StatusCode.UNAVAILABLE, lambda: self.stream(request("New", max_new=4), stub=stub,
                                                                             timeout=10), "draining")
        # The running stream completes normally; then the process exits 0.
        self.assertTrue(state["done"].wait(drain), "the stream did not finish during the drain")
        self.assertIsNone(state["error"], state["error"] and state["error"].details())
        _, ids = self.stream_text(state["msgs"])
        self.assertEqual(len(ids), n)
        self.assertEqual(state["msgs"][-1].finish_reason, pb.FINISH_REASON_LENGTH)
        code = server.wait(timeout=drain + 10)
        self.assertEqual(code, 0)
        self.assertLess(time.monotonic() - t0, drain)

    def test_drain_timeout_ends_unfinished_requests_with_unavailable(self):
        server = self.start_server("--slots", "2", "--drain-timeout", "1")
        stub = pbg.GenerationStub(server.shared_channel())
        n = 4000  # ~10 s: cannot finish within the 1 s drain
        state = self.read_in_background(stub, request("A very long story", max_new=n))
        unary = stub.Generate.future(request("Another long story", max_new=n), timeout=RPC_TIMEOUT)
        self.assertTrue(wait_until(lambda: server.metrics().value("mesa_requests_running") == 2, 5.0))
        t0 = time.monotonic()
        server.terminate()
        self.assertTrue(state["done"].wait(15), "the stream did not end")
        self.assertIsNotNone(state["error"], "the stream completed although the drain timed out")
        self.assertEqual(state["error"].code(), grpc.StatusCode.UNAVAILABLE, state["error"].details())
        self.assertIn("shutting down", state["error"].details())
        self.assertLess(len(self.stream_text(state["msgs"])[1]), n)
        with self.assertRaises(grpc.RpcError) as cm:
            unary.result(timeout=15)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE, cm.exception.details())
        code = server.wait(timeout=15)
        self.assertEqual(code, 0)
        # 1 s drain, then cancellation and a short grace period.
        self.assertLess(time.monotonic() - t0, 8.0)


if __name__ == "__main__":
    unittest.main()
