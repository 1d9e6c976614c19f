"""grpcio as the server, our client under test: the Swift peer runs every client scenario."""
import subprocess
import threading
import time
from concurrent import futures

import grpc
import pytest

from conftest import binary

SCENARIOS = [
    "unary", "metadata", "server-streaming", "client-streaming", "bidirectional", "error-status",
    "deadline", "cancellation", "large-message", "message-over-limit", "concurrent-streams", "unimplemented",
]


def make_servicer(pb2, pb2_grpc, observed):
    class Servicer(pb2_grpc.TestServiceServicer):
        """Python twin of Tests/SlipwayRPCTestSupport/TestService.swift."""

        def _metadata(self, context):
            md = dict(context.invocation_metadata())
            initial = []
            if "x-echo" in md:
                initial.append(("x-echo", md["x-echo"]))
            if "x-echo-bin" in md:
                initial.append(("x-echo-bin", md["x-echo-bin"]))
            if initial:
                context.send_initial_metadata(initial)
            if "x-echo" in md:
                context.set_trailing_metadata([("x-echo-trailer", md["x-echo"])])

        def _fail(self, request, context):
            if request.fail_code:
                context.set_trailing_metadata([("x-fail", "yes")])
                context.abort(grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == request.fail_code)), request.fail_message)

        def _sleep(self, ms, context):
            end = time.monotonic() + ms / 1000
            while time.monotonic() < end:
                if not context.is_active():
                    observed["cancelled"] += 1
                    return False
                time.sleep(0.01)
            return True

        def Unary(self, request, context):
            self._metadata(context)
            if request.delay_ms and not self._sleep(request.delay_ms, context):
                return pb2.TestResponse()
            self._fail(request, context)
            return pb2.TestResponse(text=request.text, payload=request.payload)

        def ServerStream(self, request, context):
            self._metadata(context)
            for i in range(request.count):
                if i and request.delay_ms and not self._sleep(request.delay_ms, context):
                    return
                yield pb2.TestResponse(text=request.text, index=i, payload=request.payload)
            self._fail(request, context)

        def ClientStream(self, request_iterator, context):
            self._metadata(context)
            texts, size = [], 0
            for request in request_iterator:
                texts.append(request.text)
                size += len(request.payload)
            return pb2.TestResponse(text=",".join(texts), index=len(texts), payload=str(size).encode())

        def Bidi(self, request_iterator, context):
            self._metadata(context)
            for i, request in enumerate(request_iterator):
                yield pb2.TestResponse(text=request.text, index=i, payload=request.payload)

    return Servicer()


@pytest.fixture(scope="module")
def grpcio_server(testing_pb):
    pb2, pb2_grpc = testing_pb
    observed = {"cancelled": 0}
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=64),
        options=[("grpc.max_receive_message_length", 4 * 1024 * 1024), ("grpc.max_send_message_length", 16 * 1024 * 1024)],
        maximum_concurrent_rpcs=None)
    pb2_grpc.add_TestServiceServicer_to_server(make_servicer(pb2, pb2_grpc, observed), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, observed
    server.stop(grace=None)


def test_swift_client_against_grpcio_server(grpcio_server):
    port, observed = grpcio_server
    result = subprocess.run([binary("slipway-interop-peer"), "client", f"127.0.0.1:{port}"],
                            capture_output=True, text=True, timeout=240)
    lines = result.stdout.splitlines()
    outcomes = {line.split()[1].rstrip(":"): line for line in lines if line.startswith(("ok ", "FAIL "))}
    missing = [name for name in SCENARIOS if name not in outcomes]
    assert not missing, f"scenarios that did not run: {missing}\n{result.stdout}\n{result.stderr}"
    failed = [line for line in outcomes.values() if line.startswith("FAIL")]
    assert not failed, "\n".join(failed)
    assert result.returncode == 0, result.stderr
    # Our client's cancel (RST_STREAM) reached grpcio's handler.
    deadline = time.monotonic() + 5
    while observed["cancelled"] == 0:
        assert time.monotonic() < deadline, "grpcio never saw the Swift client's cancellation"
        time.sleep(0.05)
