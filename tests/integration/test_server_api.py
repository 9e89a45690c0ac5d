"""The real `mesaserve serve` over gRPC from Python, as a user calls it: model info, tokenizer,
health and reflection; malformed and out-of-range requests; unary Generate; GenerateStream.

Run: MESASERVE=build/cli/mesaserve python3 -m unittest -v tests/integration/test_server_api.py
(ctest: `ctest -L integration`). Shared set-up: server_testcase.py.
"""
import math
import os
import subprocess
import sys
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_harness as h  # noqa: E402
import server_testcase as tc  # noqa: E402
from server_testcase import (HEADS, LAYERS, LIMIT_FLAGS, MESASERVE, RPC_TIMEOUT, VOCAB,
                             ServerTestCase, request)  # noqa: E402

pb, pbg = None, None


def setUpModule():
    global pb, pbg
    pb, pbg = tc.load_stubs()


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

    def test_default_waiting_queue_is_twice_the_slots(self):
        self.assertEqual(self.info.state_slots, 8)
        self.assertEqual(self.info.limits.max_waiting_requests, 16)

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


if __name__ == "__main__":
    unittest.main()
