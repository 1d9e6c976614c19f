"""grpcio as the client, our server under test: every call kind and the wire protocol's corners."""
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import cancelled_count

MiB = 1024 * 1024


def req(pb, **kw):
    return pb[0].TestRequest(**kw)


def test_unary_echo(stub, testing_pb):
    response = stub.Unary(req(testing_pb, text="héllo wörld", payload=bytes(range(256))), timeout=5)
    assert response.text == "héllo wörld"
    assert response.payload == bytes(range(256))


def test_metadata_both_ways(stub, testing_pb):
    call = stub.Unary.with_call(
        req(testing_pb, text="m"), timeout=5,
        metadata=[("x-echo", "from-python"), ("x-echo-bin", b"\x00\xff\x10")])
    response, call = call
    initial = dict(call.initial_metadata())
    trailing = dict(call.trailing_metadata())
    assert initial["x-echo"] == "from-python"
    assert initial["x-echo-bin"] == b"\x00\xff\x10"
    assert trailing["x-echo-trailer"] == "from-python"
    assert trailing["x-trailer"] == "bin-3"


def test_server_streaming(stub, testing_pb):
    responses = list(stub.ServerStream(req(testing_pb, text="s", count=1000), timeout=10))
    assert [r.index for r in responses] == list(range(1000))


def test_server_streaming_empty(stub, testing_pb):
    assert list(stub.ServerStream(req(testing_pb, count=0), timeout=5)) == []


def test_client_streaming(stub, testing_pb):
    requests = (req(testing_pb, text=f"c{i}", payload=b"x" * 100) for i in range(200))
    response = stub.ClientStream(requests, timeout=10)
    assert response.index == 200
    assert response.text.split(",") == [f"c{i}" for i in range(200)]
    assert response.payload == b"20000"


def test_bidirectional_ping_pong(stub, testing_pb):
    """Each response arrives before the next request is sent: real interleaving, not batching."""
    outgoing = []
    lock = threading.Condition()

    def requests():
        for i in range(50):
            with lock:
                outgoing.append(i)
            yield req(testing_pb, text=f"b{i}")
            with lock:
                lock.wait_for(lambda: received[0] > i, timeout=5)

    received = [0]
    for response in stub.Bidi(requests(), timeout=20):
        assert response.text == f"b{response.index}"
        with lock:
            received[0] += 1
            lock.notify_all()
    assert received[0] == 50


def test_error_status_and_message(stub, testing_pb):
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(req(testing_pb, fail_code=9, fail_message="the environment is locked: ünïcode 100%\nline two"), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "the environment is locked: ünïcode 100%\nline two"
    assert dict(info.value.trailing_metadata())["x-fail"] == "yes"


def test_error_after_messages(stub, testing_pb):
    call = stub.ServerStream(req(testing_pb, count=3, fail_code=10, fail_message="aborted late"), timeout=5)
    got = []
    with pytest.raises(grpc.RpcError) as info:
        for response in call:
            got.append(response.index)
    assert got == [0, 1, 2]
    assert info.value.code() == grpc.StatusCode.ABORTED


def test_unknown_method_is_unimplemented(channel):
    method = channel.unary_unary("/slipway.testing.v1.TestService/DoesNotExist")
    with pytest.raises(grpc.RpcError) as info:
        method(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "DoesNotExist" in info.value.details()


def test_deadline_enforced_and_handler_cancelled(stub, testing_pb):
    before = cancelled_count(stub, testing_pb)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(req(testing_pb, delay_ms=10_000), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 5
    # The server's own deadline (grpc-timeout) cancels the handler: its sleep is interrupted.
    deadline = time.monotonic() + 5
    while cancelled_count(stub, testing_pb) <= before:
        assert time.monotonic() < deadline, "the handler was not cancelled by the deadline"
        time.sleep(0.05)


def test_server_side_deadline_without_client_timer(channel, testing_pb):
    """grpc-timeout is enforced by the server itself: it answers DEADLINE_EXCEEDED."""
    stub = testing_pb[1].TestServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(req(testing_pb, delay_ms=10_000), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_client_cancel_cancels_handler(stub, testing_pb):
    before = cancelled_count(stub, testing_pb)
    call = stub.ServerStream(req(testing_pb, count=1000, delay_ms=50), timeout=30)
    assert next(call).index == 0
    call.cancel()
    deadline = time.monotonic() + 5
    while cancelled_count(stub, testing_pb) <= before:
        assert time.monotonic() < deadline, "RST_STREAM did not cancel the handler"
        time.sleep(0.05)


def test_large_message_near_limit(stub, testing_pb):
    payload = b"\x07" * (4 * MiB - 64)
    assert stub.Unary(req(testing_pb, payload=payload), timeout=30).payload == payload


def test_message_over_limit_is_resource_exhausted(stub, testing_pb):
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(req(testing_pb, payload=b"\x01" * (5 * MiB)), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit" in info.value.details()


def test_many_concurrent_streams(stub, testing_pb):
    futures = [stub.Unary.future(req(testing_pb, text=f"c{i}", delay_ms=20), timeout=30) for i in range(500)]
    assert sorted(f.result().text for f in futures) == sorted(f"c{i}" for i in range(500))


def test_health_check_and_watch(channel):
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="grpc.health.v1.Health"), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=5)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection(channel, version):
    if version == "v1":
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
        import grpc_reflection.v1alpha.proto_reflection_descriptor_database as module
        from grpc_reflection.v1alpha import reflection_pb2_grpc as alpha_grpc  # noqa: F401
        from google.protobuf import descriptor_pb2
        # The v1 client: talk to grpc.reflection.v1 directly with the upstream proto.
        from grpc_tools import protoc  # noqa: F401
        from grpc_reflection.v1alpha import reflection_pb2 as alpha_pb2
        request = alpha_pb2.ServerReflectionRequest(file_containing_symbol="slipway.testing.v1.TestService")
        method = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=alpha_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=alpha_pb2.ServerReflectionResponse.FromString)
        responses = list(method(iter([request]), timeout=5))
        assert len(responses) == 1
        files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in responses[0].file_descriptor_response.file_descriptor_proto]
        assert files[0].name == "slipway/testing/v1/testing.proto"
        assert [m.name for m in files[0].service[0].method] == ["Unary", "ServerStream", "ClientStream", "Bidi"]
        return
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"slipway.testing.v1.TestService", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= services
    pool = DescriptorPool(database)
    method = pool.FindMethodByName("slipway.testing.v1.TestService.Bidi")
    assert method.client_streaming and method.server_streaming
    message = pool.FindMessageTypeByName("slipway.testing.v1.AllTypes")
    assert "f_sfixed64" in message.fields_by_name
