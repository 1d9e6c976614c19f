"""Fixtures for the interop and robustness suites: our Swift binaries against Python grpcio.

grpcio (C-core) is a complete, independent gRPC implementation: every test here has one side
written by someone else. Binaries come from SLIPWAY_BIN_DIR (default .build/debug).
"""
import os
import subprocess
import sys
import tempfile

import grpc
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
