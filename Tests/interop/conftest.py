"""Fixtures for the interop and robustness suites: our Swift binaries against Python grpcio.

grpcio (C-core) is a complete, independent gRPC implementation: every test here has one side
written by someone else. Binaries come from SLIPWAY_BIN_DIR (default .build/debug).
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from slipway_local import free_port, platform_channel, prepare_pki  # noqa: E402,F401  (re-exported for the tests)
BIN_DIR = os.environ.get("SLIPWAY_BIN_DIR", os.path.join(ROOT, ".build", "debug"))


def binary(name):
    path = os.path.join(BIN_DIR, name)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: build with `swift build` first (make test does)")
    return path


@pytest.fixture(scope="session")
def testing_pb():
    """testing.proto compiled by grpcio-tools, from the same protos/ our code is generated from."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="slipway-pb-")
    rc = protoc.main([
        "protoc", f"-I{ROOT}/protos", f"--python_out={out}", f"--grpc_python_out={out}",
        "slipway/testing/v1/testing.proto",
    ])
    assert rc == 0, "grpc_tools.protoc failed on protos/slipway/testing/v1/testing.proto"
    sys.path.insert(0, out)
    from slipway.testing.v1 import testing_pb2, testing_pb2_grpc

    return testing_pb2, testing_pb2_grpc


@pytest.fixture(scope="session")
def logs_pb():
    """logs.proto compiled by grpcio-tools: (logs_pb2, logs_pb2_grpc)."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="slipway-pb-")
    rc = protoc.main([
        "protoc", f"-I{ROOT}/protos", f"--python_out={out}", f"--grpc_python_out={out}",
        "slipway/logs/v1/logs.proto",
    ])
    assert rc == 0, "grpc_tools.protoc failed on protos/slipway/logs/v1/logs.proto"
    sys.path.insert(0, out)
    from slipway.logs.v1 import logs_pb2, logs_pb2_grpc

    return logs_pb2, logs_pb2_grpc


class LogsServer:
    """slipway-logs on a free port over a data directory it may share with a later instance.

    Its port takes only mutual TLS: the platform CA and identities are made under
    <data_dir>/pki before it starts (kept across restarts), and `channel()` opens a grpcio channel
    presenting one of them (the operator by default, who may call every method)."""

    def __init__(self, data_dir=None, flags=()):
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="slipway-logs-")
        self.flags = list(flags)
        self.proc = None
        self.start()

    def start(self):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.stderr = open(os.path.join(self.data_dir, f"stderr-{self.port}.log"), "w")
        prepare_pki(BIN_DIR, self.data_dir)
        self.proc = subprocess.Popen(
            [binary("slipway-logs"), "--listen", self.address, "--data-dir", self.data_dir] + self.flags,
            stdout=subprocess.DEVNULL, stderr=self.stderr)
        self.wait_serving()

    def wait_serving(self, timeout=30):
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with self.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"slipway-logs exited with {self.proc.returncode}: {self.log()[-2000:]}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"slipway-logs is not SERVING after {timeout} s: {self.log()[-2000:]}")
                time.sleep(0.05)

    def channel(self, identity="operator", options=()):
        """A grpcio channel to this server over mutual TLS, presenting `identity`'s platform
        certificate (<data_dir>/pki/identities/<identity>) and checking the server is slipway-logs."""
        return platform_channel(self.data_dir, self.address, "logs", identity=identity, options=options)

    def credentials(self, identity="operator"):
        """(ca.crt, tls.crt, tls.key) paths of `identity`, for clients that do TLS themselves."""
        directory = os.path.join(self.data_dir, "pki", "identities", identity)
        return (os.path.join(self.data_dir, "pki", "ca.crt"), os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key"))

    def log(self):
        with open(self.stderr.name) as f:
            return f.read()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def restart(self):
        """kill -9 (if running) and start again on the same data directory."""
        if self.alive():
            self.kill9()
        self.start()

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Process:
    """A child process whose stdout announces 'listening PORT'."""

    def __init__(self, args):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            self.proc.kill()
            raise RuntimeError(f"{args[0]} did not start: {line!r} {self.proc.stderr.read()}")
        self.port = int(line.split()[1])
        self.address = f"127.0.0.1:{self.port}"

    def alive(self):
        return self.proc.poll() is None

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def swift_server():
    """Our server (TestService + health + reflection) on a free port."""
    server = Process([binary("slipway-interop-peer"), "serve", "127.0.0.1:0"])
    yield server
    assert server.alive(), "the Swift server died during the tests"
    server.stop()


@pytest.fixture
def channel(swift_server):
    options = [("grpc.max_send_message_length", 16 * 1024 * 1024), ("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    with grpc.insecure_channel(swift_server.address, options=options) as ch:
        yield ch


@pytest.fixture
def stub(channel, testing_pb):
    return testing_pb[1].TestServiceStub(channel)


def cancelled_count(stub, testing_pb):
    return stub.Unary(testing_pb[0].TestRequest(text="__cancelled_count"), timeout=5).index
