"""Security of the real server: TLS, mutual TLS, bearer tokens, a separate health listener,
stream limits, start-up errors for bad security flags, and no prompt or completion text in logs.

Certificates are made at test time with openssl: a CA, a server certificate for 127.0.0.1, a
client certificate from that CA, and a client certificate from a second, foreign CA.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_harness import MESASERVE, SOURCE_DIR, ServerProcess, health_check, stubs  # noqa: E402

pb, rpc = stubs()
TOKEN = "s3cret-token-for-tests-0123456789"
PROMPT = "zebra quartz lighthouse"  # words to look for in the logs


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_pki(d):
    """CA, server and client certificates in `d`; returns the paths."""
    def ca(name):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)

    def leaf(name, issuer, san=None):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        ext = os.path.join(d, f"{name}.ext")
        with open(ext, "w") as f:
            f.write(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", ext, cwd=d)

    ca("ca")
    ca("other_ca")
    leaf("server", "ca", san="IP:127.0.0.1,DNS:localhost")
    leaf("client", "ca")
    leaf("intruder", "other_ca")
    return {n: os.path.join(d, n) for n in ("ca", "other_ca", "server", "client", "intruder")}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def request(text=PROMPT, max_new=4):
    return pb.GenerateRequest(text=text, sampling=pb.SamplingParams(temperature=0.0),
                              stopping=pb.StoppingCriteria(max_new_tokens=max_new))


class SecurityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="mesa_sec_")
        cls.pki = make_pki(cls.dir)
        cls.token_file = os.path.join(cls.dir, "token")
        with open(cls.token_file, "w") as f:
            f.write(TOKEN + "\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def serve(self, *flags):
        server = ServerProcess("--slots", "2", *flags).start()
        self.addCleanup(server.stop)
        return server

    def tls_channel(self, server, ca="ca", client=None):
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(self.pki[ca] + ".pem"),
            private_key=read(self.pki[client] + ".key") if client else None,
            certificate_chain=read(self.pki[client] + ".pem") if client else None)
        channel = grpc.secure_channel(f"127.0.0.1:{server.grpc_port}", creds)
        self.addCleanup(channel.close)
        return channel

    def assert_code(self, code, fn, fragment=None):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn()
        self.assertEqual(ctx.exception.code(), code, ctx.exception.details())
        if fragment:
            self.assertIn(fragment, ctx.exception.details())

    def test_tls(self):
        server = self.serve("--tls-cert", self.pki["server"] + ".pem", "--tls-key", self.pki["server"] + ".key")
        r = rpc.GenerationStub(self.tls_channel(server)).Generate(request(), timeout=30)
        self.assertEqual(r.usage.completion_tokens, 4)
        # A plaintext client cannot talk to it.
        plain = grpc.insecure_channel(server.address)
        self.addCleanup(plain.close)
        self.assert_code(grpc.StatusCode.UNAVAILABLE, lambda: rpc.GenerationStub(plain).Generate(request(), timeout=5))
        # A client that trusts another CA refuses the server.
        other = self.tls_channel(server, ca="other_ca")
        self.assert_code(grpc.StatusCode.UNAVAILABLE, lambda: rpc.GenerationStub(other).Generate(request(), timeout=5))

    def test_mutual_tls(self):
        server = self.serve("--tls-cert", self.pki["server"] + ".pem", "--tls-key", self.pki["server"] + ".key",
                            "--tls-client-ca", self.pki["ca"] + ".pem")
        ok = rpc.GenerationStub(self.tls_channel(server, client="client")).Generate(request(), timeout=30)
        self.assertEqual(ok.usage.completion_tokens, 4)
        for client in (None, "intruder"):  # no certificate; a certificate from the wrong CA
            with self.subTest(client=client):
                stub = rpc.GenerationStub(self.tls_channel(server, client=client))
                self.assert_code(grpc.StatusCode.UNAVAILABLE, lambda: stub.Generate(request(), timeout=5))

    def test_bearer_token(self):
        server = self.serve("--auth-token-file", self.token_file, "--health-listen", "127.0.0.1:0")
        stub = rpc.GenerationStub(server.shared_channel())
        self.assert_code(grpc.StatusCode.UNAUTHENTICATED, lambda: stub.Generate(request(), timeout=10),
                         "authorization: Bearer")
        self.assert_code(grpc.StatusCode.UNAUTHENTICATED,
                         lambda: stub.Generate(request(), timeout=10, metadata=[("authorization", "Bearer wrong")]),
                         "invalid bearer token")
        self.assert_code(grpc.StatusCode.UNAUTHENTICATED,
                         lambda: list(stub.GenerateStream(request(), timeout=10,
                                                          metadata=[("authorization", "Bearer " + TOKEN[:-1])])))
        for call in (lambda m: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10, metadata=m),
                     lambda m: stub.Tokenize(pb.TokenizeRequest(text="x"), timeout=10, metadata=m)):
            self.assert_code(grpc.StatusCode.UNAUTHENTICATED, lambda: call(None))
            call([("authorization", "Bearer " + TOKEN)])
        good = [("authorization", "Bearer " + TOKEN)]
        self.assertEqual(stub.Generate(request(), timeout=30, metadata=good).usage.completion_tokens, 4)
        # Rejections are counted; the health listener needs no token.
        self.assertGreaterEqual(server.metrics().value("mesa_requests_total", outcome="rejected"), 3)
        self.assertIsNotNone(server.health_port)
        health = grpc.insecure_channel(f"127.0.0.1:{server.health_port}")
        self.addCleanup(health.close)
        self.assertEqual(health_check(health), 1)  # SERVING
        self.assertEqual(subprocess.run([MESASERVE, "health", "--address", f"127.0.0.1:{server.health_port}"],
                                        capture_output=True).returncode, 0)

    def test_no_prompt_or_completion_text_in_logs(self):
        server = self.serve("--log-level", "info")
        stub = rpc.GenerationStub(server.shared_channel())
        r = stub.Generate(request(max_new=16), timeout=30)
        list(stub.GenerateStream(request(max_new=16), timeout=30))
        server.stop()
        log = server.log(limit=10 ** 6)
        for word in PROMPT.split():
            self.assertNotIn(word, log)
        if len(r.text.strip()) >= 12:
            self.assertNotIn(r.text.strip(), log)

    def test_stream_limit_per_connection(self):
        server = self.serve("--max-streams-per-connection", "2", "--slots", "4")
        stub = rpc.GenerationStub(server.shared_channel())
        # One call first, so that the connection's SETTINGS (with the limit) have been exchanged:
        # a burst on a brand-new connection races them, and with Debian's gRPC 1.51 one stream of
        # such a burst sometimes stalls (about 1 run in 8 on a loaded machine; see docs/reliability.md).
        self.assertEqual(sum(len(m.token_ids) for m in stub.GenerateStream(request(max_new=1), timeout=60)), 1)
        # Three streams on one connection: the third waits for a free stream, it is not refused.
        calls = [stub.GenerateStream(request(max_new=8), timeout=60) for _ in range(3)]
        self.assertEqual([sum(len(m.token_ids) for m in c) for c in calls], [8, 8, 8])

    def test_bad_security_flags_are_startup_errors(self):
        cases = [(["--tls-cert", self.pki["server"] + ".pem"], "--tls-cert and --tls-key must be given together"),
                 (["--tls-client-ca", self.pki["ca"] + ".pem"], "needs --tls-cert"),
                 (["--auth-token-file", "/nonexistent/token"], "--auth-token-file: cannot read '/nonexistent/token'")]
        short = os.path.join(self.dir, "short")
        with open(short, "w") as f:
            f.write("abc\n")
        cases.append((["--auth-token-file", short], "has 3 characters; at least 16 are required"))
        for flags, message in cases:
            with self.subTest(flags=flags):
                proc = subprocess.run([MESASERVE, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
                                       *flags], capture_output=True, text=True, timeout=60, cwd=SOURCE_DIR)
                self.assertEqual(proc.returncode, 1)
                self.assertIn(message, proc.stderr)

    def test_state_pool_that_does_not_fit_is_a_startup_error(self):
        proc = subprocess.run([MESASERVE, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
                               "--state-memory-mb", "1"], capture_output=True, text=True, timeout=60, cwd=SOURCE_DIR)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("the state pool does not fit: one sequence needs 1646592 bytes", proc.stderr)
        self.assertIn("1048576 bytes are available", proc.stderr)


if __name__ == "__main__":
    unittest.main()
