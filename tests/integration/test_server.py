"""The real `mesaserve serve` binary, driven over gRPC from Python as a user drives it.

Each test class starts its own server on 127.0.0.1 (port 0) with the flags it needs, using the
bundled model (models/mesanet-tiny-en: vocab 4096, 8 layers, 6 heads), and stops it with
SIGTERM at the end, after checking that every state slot is free again and that the server
exits 0. A failing test shows the server's stderr.

Run: MESASERVE=build/cli/mesaserve python3 -m unittest -v tests/integration/test_server.py
(ctest: `ctest -L integration`). About 35-40 s on a 2-core machine.
"""
import functools
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_harness as h  # noqa: E402

pb, pbg = None, None
MESASERVE = h.MESASERVE
VOCAB, LAYERS, HEADS = 4096, 8, 6
RPC_TIMEOUT = 60.0  # seconds; every call has a deadline

# Flags of the servers that check limits: distinctive values, so that messages and
# GetModelInfo can be checked against them.
LIMIT_FLAGS = ("--slots", "3", "--max-prompt-tokens", "32", "--max-new-tokens", "512",
               "--default-max-new-tokens", "16", "--max-waiting", "100", "--cg-min-tol", "1e-5",
               "--cg-max-iters-limit", "100", "--cg-max-iters", "40", "--cg-tol", "1e-4")


def setUpModule():
    global pb, pbg
    if not os.path.exists(MESASERVE):
        raise unittest.SkipTest(f"{MESASERVE} is not built (set MESASERVE)")
    pb, pbg = h.stubs()


def request(text=None, ids=None, max_new=16, temperature=0.0, seed=None, ignore_eos=True, stop=(),
            stop_ids=(), top_logprobs=0, cg=None, request_id="", add_bos=None, priority=0, **sampling):
    r = pb.GenerateRequest(top_logprobs=top_logprobs, request_id=request_id, priority=priority)
    if text is not None:
        r.text = text
    if ids is not None:
        r.token_ids.ids.extend(ids)
    if add_bos is not None:
        r.add_bos = add_bos
    if temperature is not None:
        r.sampling.temperature = temperature
    if seed is not None:
        r.sampling.seed = seed
    for k, v in sampling.items():
        setattr(r.sampling, k, v)
    if max_new is not None:
        r.stopping.max_new_tokens = max_new
    r.stopping.ignore_eos = ignore_eos
    r.stopping.stop.extend(stop)
    r.stopping.stop_token_ids.extend(stop_ids)
    if cg is not None:
        r.cg.CopyFrom(cg)
    return r


def wait_until(predicate, timeout, interval=0.02):
    """Polls `predicate` until it returns a true value; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def _with_server_log(fn):
    """Appends the server's stderr to the failure message of a test."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except unittest.SkipTest:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised with context
            servers = [s for s in getattr(self, "_servers_for_log", []) if s is not None]
            if getattr(type(self), "server", None) is not None:
                servers.insert(0, type(self).server)
            logs = "".join(f"\n--- mesaserve serve {' '.join(s.flags)}: stderr ---\n{s.log()}" for s in servers)
            raise AssertionError(f"{type(e).__name__}: {e}{logs}") from e

    return wrapper


class ServerTestCase(unittest.TestCase):
    """A test class with one server (SERVER_FLAGS) for all its tests; None = no shared server."""

    SERVER_FLAGS = ("--slots", "8")
    server = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, fn in list(vars(cls).items()):
            if name.startswith("test") and callable(fn):
                setattr(cls, name, _with_server_log(fn))

    @classmethod
    def setUpClass(cls):
        cls.server = None
        if cls.SERVER_FLAGS is None:
            return
        server = h.ServerProcess(*cls.SERVER_FLAGS)
        cls.addClassCleanup(server.cleanup)  # kills it whatever happens
        server.start()
        cls.server = server
        cls.stub = pbg.GenerationStub(server.shared_channel())
        cls.info = cls.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)

    @classmethod
    def tearDownClass(cls):
        if cls.server is None:
            return
        # Every slot free and nothing running once the class is done; then a clean exit.
        try:
            idle = wait_until(lambda: cls._idle_state(), timeout=5.0)
            if not idle:
                raise AssertionError(f"the server is not idle after {cls.__name__}: "
                                     f"{cls._load()}\n--- stderr ---\n{cls.server.log()}")
        finally:
            code = cls.server.stop(timeout=15)
        if code != 0:
            raise AssertionError(f"mesaserve serve exited with {code} after SIGTERM\n{cls.server.log()}")

    @classmethod
    def _load(cls):
        m = cls.server.metrics()
        return {k: m.value(k) for k in ("mesa_state_slots_used", "mesa_requests_running", "mesa_requests_waiting")}

    @classmethod
    def _idle_state(cls):
        return all(v == 0 for v in cls._load().values())

    def setUp(self):
        self._servers_for_log = []

    # Calls -------------------------------------------------------------------------------------

    def generate(self, req, stub=None, timeout=RPC_TIMEOUT):
        return (stub or self.stub).Generate(req, timeout=timeout)

    def stream(self, req, stub=None, timeout=RPC_TIMEOUT):
        return list((stub or self.stub).GenerateStream(req, timeout=timeout))

    def stream_text(self, msgs):
        return "".join(m.text for m in msgs), [t for m in msgs for t in m.token_ids]

    def assertRpcError(self, code, fn, *fragments):
        """Calls fn(); expects an RpcError with `code` whose details contain every fragment."""
        with self.assertRaises(grpc.RpcError) as cm:
            fn()
        err = cm.exception
        self.assertEqual(err.code(), code, f"details: {err.details()!r}")
        for f in fragments:
            self.assertIn(f, err.details() or "")
        return err

    def wait_idle(self, timeout=1.0):
        idle = wait_until(self._idle_state, timeout)
        self.assertTrue(idle, f"slots not freed within {timeout} s: {self._load()}")


# ----------------------------------------------------------------------------------------------
# 10, 13: model info, tokenizer, health, reflection

class ModelInfoTest(ServerTestCase):
    SERVER_FLAGS = LIMIT_FLAGS

    def test_model_info_reports_model_and_flags(self):
        info = self.info
        self.assertEqual(info.name, "mesanet-tiny-en")
        self.assertEqual(info.architecture, "mesa_net")
        self.assertEqual(info.backend, "cpu")
        self.assertIn(info.dtype, ("bfloat16", "float16", "float32"))
        self.assertEqual((info.vocab_size, info.num_layers, info.num_heads), (VOCAB, LAYERS, HEADS))
        self.assertEqual(info.hidden_size, 384)
        self.assertEqual(info.head_dim, 64)
        self.assertEqual((info.bos_token_id, info.eos_token_id), (1, 2))
        self.assertEqual(info.state_slots, 3)
        self.assertGreater(info.parameter_bytes, 1_000_000)
        m = self.server.metrics()
        self.assertEqual(info.state_bytes_per_sequence, m.value("mesa_state_bytes_per_slot"))
        self.assertEqual(m.value("mesa_state_slots_capacity"), 3)
        lim = info.limits
        self.assertEqual(lim.max_prompt_tokens, 32)
        self.assertEqual(lim.max_new_tokens, 512)
        self.assertEqual(lim.default_max_new_tokens, 16)
        self.assertEqual(lim.max_waiting_requests, 100)
        self.assertEqual((lim.max_stop_strings, lim.max_stop_string_bytes, lim.max_top_logprobs), (16, 256, 20))
        cg = info.cg
        self.assertEqual(cg.mode, pb.CG_MODE_ADAPTIVE)
        self.assertAlmostEqual(cg.tolerance, 1e-4, delta=1e-9)
        self.assertEqual(cg.max_iterations, 40)
        self.assertAlmostEqual(cg.min_tolerance, 1e-5, delta=1e-10)
        self.assertEqual(cg.max_iterations_limit, 100)

    def test_tokenize_detokenize_round_trip(self):
        for text in ("Hello world", "The license grants you the right to use it.", "Café, naïve über 日本語 😀",
                     "line one\nline two"):
            with self.subTest(text=text):
                tok = self.stub.Tokenize(pb.TokenizeRequest(text=text), timeout=10)
                self.assertGreater(len(tok.token_ids), 0)
                self.assertEqual(len(tok.pieces), len(tok.token_ids))
                self.assertTrue(all(0 <= t < VOCAB for t in tok.token_ids))
                self.assertNotEqual(tok.token_ids[0], self.info.bos_token_id)
                back = self.stub.Detokenize(pb.DetokenizeRequest(token_ids=tok.token_ids), timeout=10)
                self.assertEqual(back.text, text)
                with_bos = self.stub.Tokenize(pb.TokenizeRequest(text=text, add_bos=True), timeout=10)
                self.assertEqual(list(with_bos.token_ids), [self.info.bos_token_id, *tok.token_ids])
                self.assertEqual(len(with_bos.pieces), len(with_bos.token_ids))

    def test_default_max_new_tokens_applies(self):
        r = request("Hello", max_new=None)
        resp = self.generate(r)
        self.assertEqual(resp.usage.completion_tokens, 16)
        self.assertEqual(resp.finish_reason, pb.FINISH_REASON_LENGTH)

    def test_configured_cg_defaults_apply(self):
        # --cg-max-iters 40 / --cg-tol 1e-4 are the defaults; a fixed-mode request without a count
        # uses the server's cap of 40 (per the proto: the model's own count only when unset).
        resp = self.generate(request("Hello", max_new=4, cg=pb.CgOptions(mode=pb.CG_MODE_FIXED)))
        self.assertGreater(resp.cg.head_tokens, 0)
        self.assertEqual(resp.cg.total_iterations, 40 * resp.cg.head_tokens)

    def test_health_is_serving(self):
        ch = self.server.shared_channel()
        self.assertEqual(h.health_check(ch), h.SERVING)
        # Only the whole server ("") is registered with the health service.
        with self.assertRaises(grpc.RpcError) as cm:
            h.health_check(ch, "no.such.Service")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        # The command-line probe agrees.
        proc = subprocess.run([MESASERVE, "health", "--address", self.server.address], capture_output=True,
                              text=True, timeout=30)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_reflection_lists_the_services(self):
        names = h.reflection_services(self.server.shared_channel())
        self.assertIn("mesa.v1.Generation", names)
        self.assertIn("grpc.health.v1.Health", names)


# ----------------------------------------------------------------------------------------------
# 6: malformed and out-of-range requests

class ValidationTest(ServerTestCase):
    SERVER_FLAGS = LIMIT_FLAGS
    INVALID = grpc.StatusCode.INVALID_ARGUMENT

    def cases(self):
        r = request
        return [
            ("no prompt", pb.GenerateRequest(), self.INVALID, ["no prompt"]),
            ("empty token_ids", r(ids=[]), self.INVALID, ["prompt is empty"]),
            ("empty text without BOS", r(text="", add_bos=False), self.INVALID, ["prompt is empty"]),
            ("token id = vocab", r(ids=[1, 5, VOCAB]), self.INVALID, [f"token id {VOCAB}", f"[0, {VOCAB})"]),
            ("negative token id", r(ids=[1, -1]), self.INVALID, ["token id -1", f"[0, {VOCAB})"]),
            ("max_new_tokens too large", r("Hi", max_new=513), self.INVALID, ["max_new_tokens = 513", "[1, 512]"]),
            ("max_new_tokens zero", r("Hi", max_new=0), self.INVALID, ["max_new_tokens = 0", "[1, 512]"]),
            ("temperature negative", r("Hi", temperature=-0.5), self.INVALID, ["temperature = -0.5", "[0, 100]"]),
            ("temperature too large", r("Hi", temperature=101.0), self.INVALID, ["temperature = 101", "[0, 100]"]),
            ("top_p zero", r("Hi", top_p=0.0), self.INVALID, ["top_p = 0", "(0, 1]"]),
            ("top_p above one", r("Hi", top_p=1.5), self.INVALID, ["top_p = 1.5", "(0, 1]"]),
            ("top_k above vocab", r("Hi", top_k=VOCAB + 1), self.INVALID, [f"top_k = {VOCAB + 1}", str(VOCAB)]),
            ("top_k negative", r("Hi", top_k=-1), self.INVALID, ["top_k = -1"]),
            ("min_p above one", r("Hi", min_p=1.5), self.INVALID, ["min_p = 1.5", "[0, 1]"]),
            ("repetition_penalty zero", r("Hi", repetition_penalty=0.0), self.INVALID,
             ["repetition_penalty = 0", "(0, 10]"]),
            ("presence_penalty", r("Hi", presence_penalty=3.0), self.INVALID, ["presence_penalty = 3", "[-2, 2]"]),
            ("frequency_penalty", r("Hi", frequency_penalty=-3.0), self.INVALID,
             ["frequency_penalty = -3", "[-2, 2]"]),
            ("top_logprobs too large", r("Hi", top_logprobs=21), self.INVALID, ["top_logprobs = 21", "[0, 20]"]),
            ("top_logprobs negative", r("Hi", top_logprobs=-1), self.INVALID, ["top_logprobs = -1", "[0, 20]"]),
            ("too many stop strings", r("Hi", stop=[f"s{i}" for i in range(17)]), self.INVALID,
             ["stop has 17 strings", "limit is 16"]),
            ("stop string too long", r("Hi", stop=["x" * 257]), self.INVALID, ["257 bytes", "limit is 256"]),
            ("empty stop string", r("Hi", stop=["ok", ""]), self.INVALID, ["stop strings must not be empty"]),
            ("stop token id outside vocab", r("Hi", stop_ids=[VOCAB + 7]), self.INVALID,
             [f"stop_token_ids: token id {VOCAB + 7}", f"[0, {VOCAB})"]),
            ("too many stop token ids", r("Hi", stop_ids=list(range(3, 68))), self.INVALID,
             ["stop_token_ids has 65 ids", "limit is 64"]),
            ("cg.tolerance below --cg-min-tol", r("Hi", cg=pb.CgOptions(tolerance=1e-6)), self.INVALID,
             ["cg.tolerance = 1e-06", "[1e-05, 1)"]),
            ("cg.tolerance one", r("Hi", cg=pb.CgOptions(tolerance=1.0)), self.INVALID,
             ["cg.tolerance = 1 ", "[1e-05, 1)"]),
            ("cg.max_iterations above limit", r("Hi", cg=pb.CgOptions(max_iterations=101)), self.INVALID,
             ["cg.max_iterations = 101", "[1, 100]"]),
            ("cg.max_iterations zero", r("Hi", cg=pb.CgOptions(max_iterations=0)), self.INVALID,
             ["cg.max_iterations = 0", "[1, 100]"]),
            ("unknown cg.mode", r("Hi", cg=pb.CgOptions(mode=7)), self.INVALID, ["cg.mode 7", "CgMode"]),
            ("request_id too long", r("Hi", request_id="r" * 129), self.INVALID,
             ["request_id has 129 bytes", "limit is 128"]),
        ]

    def test_bad_requests_are_rejected_with_code_and_message(self):
        before = self.server.metrics().value("mesa_requests_total", outcome="rejected")
        calls = 0
        for name, req, code, fragments in self.cases():
            with self.subTest(case=name, rpc="Generate"):
                self.assertRpcError(code, lambda: self.generate(req, timeout=10), *fragments)
                calls += 1
            with self.subTest(case=name, rpc="GenerateStream"):
                self.assertRpcError(code, lambda: self.stream(req, timeout=10), *fragments)
                calls += 1
        # Every rejection is counted, none holds a slot.
        self.assertEqual(self.server.metrics().value("mesa_requests_total", outcome="rejected"), before + calls)
        self.wait_idle()

    def test_limits_at_the_boundary_are_accepted(self):
        ok = [
            request(ids=list(range(3, 35)), max_new=1),  # exactly --max-prompt-tokens 32
            request("Hi", max_new=1, top_logprobs=20, stop=["y" * 256], stop_ids=list(range(3, 67)),
                    request_id="r" * 128, cg=pb.CgOptions(tolerance=1e-5, max_iterations=100)),
            request("Hi", max_new=1, top_k=VOCAB, top_p=1.0, temperature=100.0, seed=1),
        ]
        for i, req in enumerate(ok):
            with self.subTest(i=i):
                resp = self.generate(req, timeout=30)
                self.assertEqual(resp.usage.completion_tokens, 1)

    def test_prompt_over_the_limit_is_invalid_argument(self):
        # mesa.proto: "INVALID_ARGUMENT ... an empty or too long prompt".
        cases = [(request(ids=[5] * 33), "prompt has 33 tokens; limit is 32"),
                 (request(text="word " * 40), "tokens; limit is 32"),
                 (request(text="a" * ((1 << 20) + 1)), "prompt text has 1048577 bytes; limit is 1048576")]
        for req, fragment in cases:
            with self.subTest(fragment=fragment):
                self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT, lambda: self.generate(req, timeout=10),
                                    fragment)

    def test_prompt_over_the_limit_names_limit_and_value(self):
        # The message part of the check above, which holds today.
        err = self.assertRpcError_any(lambda: self.generate(request(ids=[5] * 33), timeout=10))
        self.assertIn("prompt has 33 tokens; limit is 32", err.details())
        err = self.assertRpcError_any(lambda: self.generate(request(text="word " * 40), timeout=10))
        self.assertRegex(err.details(), r"prompt has \d+ tokens; limit is 32")
        self.assertIn(err.code(), (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT))

    def test_message_over_the_grpc_limit_is_resource_exhausted(self):
        # 5 MB text: larger than the server's 4 MiB receive limit.
        self.assertRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            lambda: self.generate(request(text="a" * (5 << 20)), timeout=30))

    def assertRpcError_any(self, fn):
        with self.assertRaises(grpc.RpcError) as cm:
            fn()
        return cm.exception


# ----------------------------------------------------------------------------------------------
# 1: unary Generate

class UnaryGenerateTest(ServerTestCase):
    SERVER_FLAGS = ("--slots", "8")

    def test_seeded_sampling_is_deterministic(self):
        req = request("The license", max_new=24, temperature=1.0, seed=7)
        a, b = self.generate(req), self.generate(req)
        self.assertEqual(a.text, b.text)
        self.assertEqual(list(a.token_ids), list(b.token_ids))
        self.assertEqual(len(a.token_ids), 24)
        self.assertGreater(len(a.text), 0)
        req.sampling.seed = 8
        c = self.generate(req)
        self.assertNotEqual(list(a.token_ids), list(c.token_ids))

    def test_token_id_prompt_equals_text_prompt(self):
        text = "The quick brown fox"
        tok = self.stub.Tokenize(pb.TokenizeRequest(text=text, add_bos=True), timeout=10)
        by_text = self.generate(request(text, max_new=12))
        by_ids = self.generate(request(ids=list(tok.token_ids), max_new=12))
        self.assertEqual(list(by_ids.token_ids), list(by_text.token_ids))
        self.assertEqual(by_ids.text, by_text.text)
        self.assertEqual(by_text.usage.prompt_tokens, len(tok.token_ids))
        self.assertEqual(by_ids.usage.prompt_tokens, len(tok.token_ids))
        no_bos = self.generate(request(text, max_new=1, add_bos=False))
        self.assertEqual(no_bos.usage.prompt_tokens, len(tok.token_ids) - 1)

    def test_usage_timings_and_cg_stats(self):
        n = 20
        resp = self.generate(request("Once upon a time", max_new=n, request_id="unary-1"))
        self.assertEqual(resp.request_id, "unary-1")
        self.assertEqual(resp.finish_reason, pb.FINISH_REASON_LENGTH)
        self.assertEqual(resp.usage.completion_tokens, n)
        self.assertEqual(len(resp.token_ids), n)
        self.assertEqual(len(resp.logprobs), 0)
        p = resp.usage.prompt_tokens
        tok = self.stub.Tokenize(pb.TokenizeRequest(text="Once upon a time", add_bos=True), timeout=10)
        self.assertEqual(p, len(tok.token_ids))
        t = resp.timings
        self.assertGreaterEqual(t.queue_seconds, 0.0)
        self.assertLessEqual(t.queue_seconds, t.time_to_first_token_seconds)
        self.assertLess(t.time_to_first_token_seconds, t.total_seconds)
        self.assertLess(t.total_seconds, 30.0)
        cg = resp.cg
        # One solve per (token, layer, head); the last generated token is never fed back.
        self.assertEqual(cg.head_tokens, (p + n - 1) * self.info.num_layers * self.info.num_heads)
        self.assertGreater(cg.total_iterations, 0)
        self.assertAlmostEqual(cg.mean_iterations, cg.total_iterations / cg.head_tokens, places=6)
        self.assertLessEqual(cg.cap_hits, cg.head_tokens)
        self.assertEqual(self.stub.Detokenize(pb.DetokenizeRequest(token_ids=resp.token_ids), timeout=10).text.strip(),
                         resp.text.strip())

    def test_fixed_cg_mode_runs_the_requested_iterations(self):
        resp = self.generate(request("Hello", max_new=6, cg=pb.CgOptions(mode=pb.CG_MODE_FIXED, max_iterations=7)))
        self.assertEqual(resp.finish_reason, pb.FINISH_REASON_LENGTH)
        self.assertEqual(resp.cg.total_iterations, 7 * resp.cg.head_tokens)
        self.assertAlmostEqual(resp.cg.mean_iterations, 7.0)
        self.assertEqual(resp.cg.cap_hits, 0)
        # Without a count, fixed mode runs the model's own max_cg_step_decoding (30 here).
        resp = self.generate(request("Hello", max_new=6, cg=pb.CgOptions(mode=pb.CG_MODE_FIXED)))
        self.assertAlmostEqual(resp.cg.mean_iterations, 30.0)
        # A tight adaptive cap with a tolerance it cannot reach hits the cap.
        resp = self.generate(request("Hello", max_new=6, cg=pb.CgOptions(mode=pb.CG_MODE_ADAPTIVE, tolerance=1e-6,
                                                                         max_iterations=1)))
        self.assertEqual(resp.cg.total_iterations, resp.cg.head_tokens)
        self.assertGreater(resp.cg.cap_hits, 0)

    def test_greedy_unary_equals_concatenated_stream(self):
        req = request("In the beginning", max_new=40, request_id="same")
        unary = self.generate(req)
        msgs = self.stream(req)
        text, ids = self.stream_text(msgs)
        self.assertEqual(text, unary.text)
        self.assertEqual(ids, list(unary.token_ids))
        last = msgs[-1]
        self.assertEqual(last.finish_reason, unary.finish_reason)
        self.assertEqual(last.usage, unary.usage)
        self.assertEqual(last.cg.head_tokens, unary.cg.head_tokens)
        self.assertEqual(last.cg.total_iterations, unary.cg.total_iterations)
        self.assertTrue(all(m.request_id == "same" for m in msgs))


# ----------------------------------------------------------------------------------------------
# 2: GenerateStream

class StreamTest(ServerTestCase):
    SERVER_FLAGS = ("--slots", "8")

    def raw_stream(self, req, timeout=RPC_TIMEOUT):
        """The stream's messages as bytes, so that UTF-8 is checked here, not by the parser."""
        call = self.server.shared_channel().unary_stream(
            "/mesa.v1.Generation/GenerateStream", request_serializer=pb.GenerateRequest.SerializeToString,
            response_deserializer=None)
        return list(call(req, timeout=timeout))

    def test_deltas_are_valid_utf8_and_the_last_message_carries_the_summary(self):
        # High temperature: random tokens, byte-fallback pieces included, which must never
        # produce a broken character in a delta.
        n = 160
        req = request("Café ☕ and 日本語:", max_new=n, temperature=3.0, seed=11)
        raw = self.raw_stream(req)
        deltas = []
        for i, b in enumerate(raw):
            text_bytes = b"".join(v for f, v in h.decode_fields(b) if f == 2)
            try:
                deltas.append(text_bytes.decode("utf-8"))
            except UnicodeDecodeError as e:
                self.fail(f"message {i} carries invalid UTF-8 {text_bytes!r}: {e}")
        msgs = [pb.GenerateStreamResponse.FromString(b) for b in raw]
        for m in msgs[:-1]:
            self.assertEqual(m.finish_reason, pb.FINISH_REASON_UNSPECIFIED)
            self.assertFalse(m.HasField("usage"))
            self.assertFalse(m.HasField("cg"))
        last = msgs[-1]
        self.assertEqual(last.finish_reason, pb.FINISH_REASON_LENGTH)
        self.assertEqual(last.usage.completion_tokens, n)
        self.assertGreater(last.usage.prompt_tokens, 0)
        self.assertGreater(last.timings.total_seconds, 0)
        self.assertGreater(last.cg.head_tokens, 0)
        self.assertEqual(sum(len(m.token_ids) for m in msgs), n)
        self.assertEqual("".join(deltas), self.generate(req).text)

    def test_stop_string_is_not_returned(self):
        ref = self.generate(request("Once upon a time", max_new=40))
        text = ref.text
        stop = text[12:17]
        self.assertEqual(len(stop), 5, text)
        cut = text.find(stop)
        for rpc in ("unary", "stream"):
            with self.subTest(rpc=rpc):
                req = request("Once upon a time", max_new=40, stop=["never-appears-xyz", stop])
                if rpc == "unary":
                    resp = self.generate(req)
                    out, finish, usage = resp.text, resp.finish_reason, resp.usage
                else:
                    msgs = self.stream(req)
                    out, _ = self.stream_text(msgs)
                    finish, usage = msgs[-1].finish_reason, msgs[-1].usage
                self.assertEqual(finish, pb.FINISH_REASON_STOP_STRING)
                self.assertEqual(out, text[:cut])
                self.assertNotIn(stop, out)
                self.assertLess(usage.completion_tokens, 40)

    def test_stop_token_is_returned(self):
        ref = self.generate(request("Once upon a time", max_new=30))
        ids = list(ref.token_ids)
        stop_tok = ids[6]
        j = ids.index(stop_tok)
        for rpc in ("unary", "stream"):
            with self.subTest(rpc=rpc):
                req = request("Once upon a time", max_new=30, stop_ids=[stop_tok])
                if rpc == "unary":
                    resp = self.generate(req)
                    out_ids, out, finish, usage = list(resp.token_ids), resp.text, resp.finish_reason, resp.usage
                else:
                    msgs = self.stream(req)
                    out, out_ids = self.stream_text(msgs)
                    finish, usage = msgs[-1].finish_reason, msgs[-1].usage
                self.assertEqual(finish, pb.FINISH_REASON_STOP_TOKEN)
                self.assertEqual(out_ids, ids[:j + 1])
                self.assertEqual(usage.completion_tokens, j + 1)
                self.assertTrue(ref.text.startswith(out), (out, ref.text))

    def test_top_logprobs(self):
        k = 5
        msgs = self.stream(request("The weather today", max_new=24, temperature=1.0, seed=3, top_logprobs=k))
        entries = []
        for m in msgs:
            self.assertEqual(len(m.logprobs), len(m.token_ids))
            entries += list(zip(m.token_ids, m.logprobs))
        self.assertEqual(len(entries), 24)
        for tok, lp in entries:
            self.assertEqual(lp.chosen.token_id, tok)
            self.assertTrue(lp.chosen.text)
            self.assertEqual(len(lp.top), k)
            values = [t.logprob for t in lp.top]
            self.assertEqual(values, sorted(values, reverse=True))
            self.assertTrue(all(v <= 1e-6 for v in values), values)
            self.assertLessEqual(sum(math.exp(v) for v in values), 1.0 + 1e-4)
            self.assertEqual(len({t.token_id for t in lp.top}), k)
            self.assertTrue(all(t.text for t in lp.top))
            top = {t.token_id: t.logprob for t in lp.top}
            if tok in top:
                self.assertAlmostEqual(lp.chosen.logprob, top[tok], places=5)
            else:
                self.assertLessEqual(lp.chosen.logprob, values[-1] + 1e-6)
        # Greedy: the chosen token is the most likely one.
        resp = self.generate(request("The weather today", max_new=10, top_logprobs=20))
        self.assertEqual(len(resp.logprobs), 10)
        for tok, lp in zip(resp.token_ids, resp.logprobs):
            self.assertEqual(len(lp.top), 20)
            self.assertAlmostEqual(lp.chosen.logprob, lp.top[0].logprob, places=5)
            self.assertEqual(lp.chosen.token_id, tok)


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
    SERVER_FLAGS = ("--slots", "16")
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
