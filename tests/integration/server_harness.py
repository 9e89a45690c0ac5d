"""Helpers for the integration tests: start the real `mesaserve serve` binary on loopback,
generate the Python stubs of the API, read /metrics, call health and reflection.

Nothing here talks to anything but 127.0.0.1.
"""
import atexit
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MESASERVE = os.environ.get("MESASERVE", os.path.join(SOURCE_DIR, "build", "cli", "mesaserve"))

_stubs = None
_stubs_lock = threading.Lock()


def stubs():
    """(mesa_pb2, mesa_pb2_grpc), generated from proto/ into a temporary directory once."""
    global _stubs
    with _stubs_lock:
        if _stubs is None:
            out = tempfile.mkdtemp(prefix="mesa_it_stubs_")
            atexit.register(shutil.rmtree, out, ignore_errors=True)
            proc = subprocess.run(
                [sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(SOURCE_DIR, "proto"),
                 f"--python_out={out}", f"--grpc_python_out={out}",
                 os.path.join(SOURCE_DIR, "proto", "mesa", "v1", "mesa.proto")],
                capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"grpc_tools.protoc failed:\n{proc.stderr}")
            sys.path.insert(0, out)
            pb = importlib.import_module("mesa.v1.mesa_pb2")
            pbg = importlib.import_module("mesa.v1.mesa_pb2_grpc")
            _stubs = (pb, pbg)
        return _stubs


# ----------------------------------------------------------------------------------------------
# Protobuf wire format, just enough for raw calls (health, reflection) and raw-byte checks.

def encode_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_bytes_field(field, data):
    if isinstance(data, str):
        data = data.encode()
    return encode_varint((field << 3) | 2) + encode_varint(len(data)) + data


def decode_fields(buf):
    """List of (field number, value); value is an int (varint/fixed) or bytes (length-delimited)."""
    fields = []
    i = 0

    def varint():
        nonlocal i
        shift = 0
        result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < len(buf):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            fields.append((field, varint()))
        elif wire == 1:
            fields.append((field, int.from_bytes(buf[i:i + 8], "little")))
            i += 8
        elif wire == 2:
            n = varint()
            fields.append((field, bytes(buf[i:i + n])))
            i += n
        elif wire == 5:
            fields.append((field, int.from_bytes(buf[i:i + 4], "little")))
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return fields


def _identity(b):
    return b


# ----------------------------------------------------------------------------------------------
# Health and reflection: the grpcio-health-checking / grpcio-reflection packages when installed,
# raw calls otherwise.

SERVING, NOT_SERVING = 1, 2


def health_check(channel, service="", timeout=5.0):
    """The serving status (1 = SERVING, 2 = NOT_SERVING) of the standard health service."""
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        call = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=_identity,
                                   response_deserializer=_identity)
        resp = call(encode_bytes_field(1, service) if service else b"", timeout=timeout)
        status = 0
        for field, value in decode_fields(resp):
            if field == 1:
                status = value
        return status
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status)


def reflection_services(channel, timeout=5.0):
    """Service names that server reflection lists."""
    try:
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    except ImportError:
        call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                     request_serializer=_identity, response_deserializer=_identity)
        names = []
        # ServerReflectionRequest.list_services = 7; response.list_services_response = 6,
        # ListServiceResponse.service = 1, ServiceResponse.name = 1.
        for resp in call(iter([encode_bytes_field(7, "")]), timeout=timeout):
            for field, value in decode_fields(resp):
                if field == 6:
                    for f2, service in decode_fields(value):
                        if f2 == 1:
                            names += [v.decode() for f3, v in decode_fields(service) if f3 == 1]
        return names
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    names = []
    for resp in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                          timeout=timeout):
        names += [s.name for s in resp.list_services_response.service]
    return names


# ----------------------------------------------------------------------------------------------
# Metrics

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """A parsed Prometheus text body: samples keyed by (name, frozenset of labels)."""

    def __init__(self, body):
        self.body = body
        self.samples = {}
        self.types = {}
        for line in body.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(None, 3)
                self.types[name] = kind.strip()
                continue
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            if not m:
                raise ValueError(f"unparsable metrics line: {line!r}")
            labels = frozenset(_LABEL.findall(m.group(2) or ""))
            self.samples[(m.group(1), labels)] = float(m.group(3))

    def get(self, name, default=None, **labels):
        return self.samples.get((name, frozenset(labels.items())), default)

    def value(self, name, **labels):
        v = self.get(name, **labels)
        if v is None:
            raise AssertionError(f"metric {name}{labels or ''} is missing")
        return v

    def series(self, name):
        """[(labels dict, value)] for every sample of `name`."""
        return [(dict(k[1]), v) for k, v in self.samples.items() if k[0] == name]


# ----------------------------------------------------------------------------------------------
# The server process

class ServerProcess:
    """`mesaserve serve` on 127.0.0.1 port 0, with stdout/stderr in files."""

    def __init__(self, *flags, env=None):
        self.flags = list(flags)
        self.extra_env = dict(env or {})
        self.proc = None
        self.grpc_port = None
        self.metrics_port = None
        self.health_port = None
        self._dir = tempfile.mkdtemp(prefix="mesa_it_server_")
        self._out_path = os.path.join(self._dir, "stdout")
        self._err_path = os.path.join(self._dir, "stderr")
        self._channel = None

    def start(self, timeout=60.0):
        env = dict(os.environ)
        env["OMP_WAIT_POLICY"] = "passive"
        # MESA_* settings of the caller's environment must not change the flags under test.
        for k in list(env):
            if k.startswith("MESA_"):
                del env[k]
        env.update(self.extra_env)
        args = [MESASERVE, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", *self.flags]
        with open(self._out_path, "wb") as out, open(self._err_path, "wb") as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                         cwd=SOURCE_DIR)
        deadline = time.monotonic() + timeout
        pattern = re.compile(r"mesaserve listening grpc=(\d+) metrics=(\d+)(?: health=(\d+))?")
        while True:
            with open(self._out_path, "r", errors="replace") as f:
                m = pattern.search(f.read())
            if m:
                self.grpc_port, self.metrics_port = int(m.group(1)), int(m.group(2))
                self.health_port = int(m.group(3)) if m.group(3) else None
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"mesaserve serve {' '.join(self.flags)} exited with {self.proc.returncode} "
                                   f"before listening:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mesaserve serve did not print its listening line within {timeout} s:\n"
                                   f"{self.log()}")
            time.sleep(0.05)

    @property
    def address(self):
        return f"127.0.0.1:{self.grpc_port}"

    def channel(self, **options):
        """A new channel to the server; the caller closes it."""
        return grpc.insecure_channel(self.address, options=list(options.items()))

    def shared_channel(self):
        if self._channel is None:
            self._channel = self.channel()
        return self._channel

    def metrics_text(self, timeout=5.0):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout) as r:
            return r.read().decode()

    def metrics(self):
        return Metrics(self.metrics_text())

    def log(self, limit=6000):
        """The server's stderr (its last `limit` characters)."""
        try:
            with open(self._err_path, "r", errors="replace") as f:
                text = f.read()
        except OSError:
            return "(no stderr)"
        if len(text) > limit:
            text = "...\n" + text[-limit:]
        return text

    def terminate(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout):
        """The exit code, or None if the process still runs after `timeout` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=30.0):
        """SIGTERM, wait for the drain; SIGKILL after `timeout`. Returns the exit code."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.terminate()
            if self.wait(timeout) is None:
                self.kill()
                return None
        return self.proc.returncode

    def kill(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def cleanup(self):
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
