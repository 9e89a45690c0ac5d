"""Shared pieces of the `mesaserve serve` integration suites (test_server_*.py): the request
builder, polling, and ServerTestCase, which starts one real server per test class on
127.0.0.1 (port 0) with the bundled model (models/mesanet-tiny-en: vocab 4096, 8 layers,
6 heads), checks after the class that every state slot is free again, stops the server with
SIGTERM and requires exit 0. A failing test shows the server's stderr.
"""
import functools
import os
import sys
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


def load_stubs():
    """(mesa_pb2, mesa_pb2_grpc) for this module and the caller; skips without the binary."""
    global pb, pbg
    if not os.path.exists(MESASERVE):
        raise unittest.SkipTest(f"{MESASERVE} is not built (set MESASERVE)")
    pb, pbg = h.stubs()
    return pb, pbg


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
