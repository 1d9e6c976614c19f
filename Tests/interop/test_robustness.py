"""Hostile and broken peers, spoken to frame by frame (hyper-h2): each gets a clean error and the
server stays up with bounded memory."""
import socket
import struct
import time

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import cancelled_count

GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


def frame(payload, flag=0):
    return bytes([flag]) + struct.pack(">I", len(payload)) + payload


class RawClient:
    """One HTTP/2 connection driven by hand."""

    def __init__(self, address, window=65535):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, body=None, headers=GRPC_HEADERS, method="POST", end=True):
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", method), (":scheme", "http"), (":path", path), (":authority", "test")] + list(headers),
                               end_stream=body is None and end)
        if body is not None:
            self.conn.send_data(stream, body, end_stream=end)
        self.flush()
        return stream

    def events(self, until, timeout=10):
        """Reads until `until(events)` is true; returns the events seen."""
        seen = []
        deadline = time.monotonic() + timeout
        while not until(seen):
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"timed out; events so far: {seen}")
            if not data:
                seen.append("closed")
                break
            seen.extend(self.conn.receive_data(data))
            self.flush()
        return seen

    def outcome(self, stream, timeout=10):
        """The response headers/trailers of `stream` as one dict, and the data received."""
        headers, data = {}, b""

        def done(events):
            return any(getattr(e, "stream_id", None) == stream and isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
                       for e in events) or "closed" in events
        for event in self.events(done, timeout):
            if getattr(event, "stream_id", None) != stream:
                continue
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                headers.update(dict(event.headers))
            elif isinstance(event, h2.events.DataReceived):
                data += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, stream)
        self.flush()
        return headers, data

    def close(self):
        self.sock.close()


def assert_healthy(address):
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_garbage_after_preface_gets_goaway(swift_server):
    sock = socket.create_connection(("127.0.0.1", swift_server.port), timeout=10)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x01\x00\x00\x00\x00\x00" + b"\xff" * 64)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    # Somewhere in what the server sent before closing is a GOAWAY frame (type 7).
    types, offset = [], 0
    while offset + 9 <= len(received):
        length = int.from_bytes(received[offset:offset + 3], "big")
        types.append(received[offset + 3])
        offset += 9 + length
    assert 7 in types, f"frame types seen: {types}"
    assert_healthy(swift_server.address)


def test_not_http2_at_all(swift_server):
    sock = socket.create_connection(("127.0.0.1", swift_server.port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(10)
    while sock.recv(65536):
        pass
    assert_healthy(swift_server.address)


def test_bad_length_prefix_is_internal(swift_server):
    client = RawClient(swift_server.address)
    stream = client.request("/slipway.testing.v1.TestService/Unary", b"\x00\x00\x00\x00\x64abc")
    headers, _ = client.outcome(stream)
    assert headers["grpc-status"] == "13", headers
    assert "inside a message" in headers.get("grpc-message", "")
    client.close()


def test_announced_oversize_message_is_refused_before_it_arrives(swift_server):
    client = RawClient(swift_server.address)
    stream = client.request("/slipway.testing.v1.TestService/Unary", b"\x00" + struct.pack(">I", 100 * 1024 * 1024), end=False)
    headers, _ = client.outcome(stream)
    assert headers["grpc-status"] == "8", headers
    client.close()


def test_compressed_flag_without_encoding_is_unimplemented(swift_server):
    client = RawClient(swift_server.address)
    stream = client.request("/slipway.testing.v1.TestService/Unary", frame(b"", flag=1))
    headers, _ = client.outcome(stream)
    assert headers["grpc-status"] == "12", headers
    client.close()


def test_wrong_content_type_is_415(swift_server):
    client = RawClient(swift_server.address)
    stream = client.request("/slipway.testing.v1.TestService/Unary", frame(b""), headers=[("content-type", "text/plain")])
    headers, _ = client.outcome(stream)
    assert headers[":status"] == "415"
    client.close()


def test_get_is_405(swift_server):
    client = RawClient(swift_server.address)
    stream = client.request("/slipway.testing.v1.TestService/Unary", None, method="GET")
    headers, _ = client.outcome(stream)
    assert headers[":status"] == "405"
    client.close()


def test_zero_request_messages_for_unary(swift_server):
    client = RawClient(swift_server.address)
    stream = client.request("/slipway.testing.v1.TestService/Unary", None)
    headers, _ = client.outcome(stream)
    assert headers["grpc-status"] == "12" and "exactly one" in headers["grpc-message"], headers
    client.close()


def test_malformed_grpc_timeout(swift_server):
    client = RawClient(swift_server.address)
    stream = client.request("/slipway.testing.v1.TestService/Unary", frame(b""), headers=GRPC_HEADERS + [("grpc-timeout", "soon")])
    headers, _ = client.outcome(stream)
    assert headers["grpc-status"] == "3", headers
    client.close()


def test_oversized_headers(swift_server):
    client = RawClient(swift_server.address)
    stream = client.request("/slipway.testing.v1.TestService/Unary", frame(b""), headers=GRPC_HEADERS + [("x-big", "v" * 20000)])
    headers, _ = client.outcome(stream)
    assert headers.get("grpc-status") == "8" or headers == {}, headers  # refused with a status, or the stream reset
    client.close()
    assert_healthy(swift_server.address)


def test_client_that_never_reads_is_bounded(swift_server, testing_pb):
    """A server stream to a client that opens no window: the writer waits, memory stays flat."""
    before = swift_server.rss_kib()
    clients = []
    for _ in range(5):
        client = RawClient(swift_server.address, window=65535)
        request = testing_pb[0].TestRequest(count=1_000_000, payload=b"p" * 1000).SerializeToString()
        client.request("/slipway.testing.v1.TestService/ServerStream", frame(request))
        clients.append(client)
    time.sleep(2)  # observation window: the handlers would write 1 GB each if nothing pushed back
    grown = swift_server.rss_kib() - before
    assert grown < 64 * 1024, f"server RSS grew by {grown} KiB"
    assert_healthy(swift_server.address)
    cancelled_before = cancelled_count(testing_pb[1].TestServiceStub(grpc.insecure_channel(swift_server.address)), testing_pb)
    for client in clients:
        client.close()
    stub = testing_pb[1].TestServiceStub(grpc.insecure_channel(swift_server.address))
    deadline = time.monotonic() + 10
    while cancelled_count(stub, testing_pb) < cancelled_before + 5:
        assert time.monotonic() < deadline, "handlers blocked on a dead client were not cancelled"
        time.sleep(0.05)


def test_thousands_of_reset_streams(swift_server):
    before = swift_server.rss_kib()
    for _ in range(5):
        client = RawClient(swift_server.address)
        try:
            for _ in range(1000):
                stream = client.request("/slipway.testing.v1.TestService/Unary", frame(b"\x30\x88\x27"), end=False)  # delay_ms=5000
                client.conn.reset_stream(stream, error_code=8)
                client.flush()
        except (BrokenPipeError, ConnectionResetError, h2.exceptions.ProtocolError):
            pass  # the server may end a connection that floods it: that is a clean answer too
        client.close()
    assert_healthy(swift_server.address)
    assert swift_server.rss_kib() - before < 64 * 1024


def test_connection_dropped_mid_call_cancels_handler(swift_server, testing_pb):
    stub = testing_pb[1].TestServiceStub(grpc.insecure_channel(swift_server.address))
    before = cancelled_count(stub, testing_pb)
    client = RawClient(swift_server.address)
    request = testing_pb[0].TestRequest(count=100, delay_ms=100).SerializeToString()
    stream = client.request("/slipway.testing.v1.TestService/ServerStream", frame(request))
    client.events(lambda events: any(isinstance(e, h2.events.DataReceived) for e in events))
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    deadline = time.monotonic() + 10
    while cancelled_count(stub, testing_pb) <= before:
        assert time.monotonic() < deadline, "the handler of a dropped connection was not cancelled"
        time.sleep(0.05)
    assert_healthy(swift_server.address)
