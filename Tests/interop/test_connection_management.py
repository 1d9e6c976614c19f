"""Keepalive, idle timeout and TLS, against a server configured for them."""
import os
import socket
import ssl
import subprocess
import tempfile
import time

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from conftest import LogsServer, Process, binary

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def start_peer(**env):
    full = dict(os.environ, **{k: str(v) for k, v in env.items()})
    old = os.environ.copy()
    os.environ.update(full)
    try:
        return Process([binary("slipway-interop-peer"), "serve", "127.0.0.1:0"])
    finally:
        os.environ.clear()
        os.environ.update(old)


def frame_types(data):
    types, offset = [], 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset:offset + 3], "big")
        types.append(data[offset + 3])
        offset += 9 + length
    return types


def read_until_closed(sock, limit):
    sock.settimeout(limit)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            return received  # a TLS peer that closed without (or with) close_notify
        if not chunk:
            return received
        received += chunk


def platform_tls_connection(server, identity="operator"):
    """A TCP connection to a LogsServer wrapped in mutual TLS as slipway's services require it: the
    client presents `identity`'s platform certificate, offers ALPN h2 only, and checks the server is
    slipway-logs against the platform CA. Returns the connected, handshaken socket."""
    ca, cert, key = server.credentials(identity)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", server.port)), server_hostname="slipway-logs")
    assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    return sock


def test_peer_that_never_answers_ping_is_disconnected():
    server = start_peer(SLIPWAY_PEER_KEEPALIVE_SECONDS=1, SLIPWAY_PEER_KEEPALIVE_TIMEOUT_SECONDS=1, SLIPWAY_PEER_IDLE_SECONDS=600)
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(PREFACE)
        start = time.monotonic()
        received = read_until_closed(sock, 15)
        assert 6 in frame_types(received), "the server never sent a keepalive PING"
        assert time.monotonic() - start < 10
    finally:
        server.stop()


def test_peer_that_answers_ping_stays_connected():
    server = start_peer(SLIPWAY_PEER_KEEPALIVE_SECONDS=1, SLIPWAY_PEER_KEEPALIVE_TIMEOUT_SECONDS=1, SLIPWAY_PEER_IDLE_SECONDS=600)
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        pings = 0
        end = time.monotonic() + 5
        sock.settimeout(0.5)
        while time.monotonic() < end:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            assert data, "the server closed a connection whose peer answers PINGs"
            pings += sum(isinstance(e, h2.events.PingReceived) for e in conn.receive_data(data))
            sock.sendall(conn.data_to_send())  # h2 acknowledges PINGs
        assert pings >= 2
    finally:
        server.stop()


def frames(data):
    """(type, flags, stream id, payload) of each whole frame in `data`."""
    found, offset = [], 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset:offset + 3], "big")
        stream = int.from_bytes(data[offset + 5:offset + 9], "big") & 0x7FFFFFFF
        found.append((data[offset + 3], data[offset + 4], stream, data[offset + 9:offset + 9 + length]))
        offset += 9 + length
    return found


def test_a_client_that_never_answers_cannot_hold_a_graceful_shutdown(logs_pb):
    """As an attacker: open a call that never ends (a live-only Tail), then never read again, so the
    shutdown notice's PING is never answered. SIGTERM must still end the service within the quiesce
    wait (1 s) and the grace period (10 s), exit 0, and tell the client in order: the notice (GOAWAY
    with the largest stream id), the final GOAWAY naming its stream, and a status for its call."""
    server = LogsServer()
    sock = None
    try:
        sock = platform_tls_connection(server)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        request = logs_pb[0].TailRequest(stream=logs_pb[0].StreamKey(environment_id="env-hostile", deployment_id="dep-1"), live_only=True)
        body = request.SerializeToString()
        conn.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":path", "/slipway.logs.v1.Logs/Tail"),
                              (":authority", server.address), ("content-type", "application/grpc"), ("te", "trailers")])
        conn.send_data(1, b"\0" + len(body).to_bytes(4, "big") + body, end_stream=True)
        sock.sendall(conn.data_to_send())
        # The call is open (the server is waiting for lines); from now on this client reads nothing.
        assert server.alive()

        started = time.monotonic()
        server.proc.terminate()
        code = server.proc.wait(timeout=30)
        elapsed = time.monotonic() - started
        assert code == 0, f"exit status {code}: {server.log()[-2000:]}"
        assert elapsed < 20, f"the shutdown took {elapsed:.1f} s with a client that never answers"

        received = frames(read_until_closed(sock, 10))
        goaways = [int.from_bytes(payload[:4], "big") & 0x7FFFFFFF for kind, _, _, payload in received if kind == 7]
        assert goaways[:2] == [0x7FFFFFFF, 1], f"GOAWAY last-stream ids {goaways}: expected the notice, then the final one naming stream 1"
        assert any(kind == 1 and stream == 1 and flags & 0x1 for kind, flags, stream, _ in received), \
            "the open call got no status (HEADERS with END_STREAM) before the connection closed"
    finally:
        if sock is not None:
            sock.close()
        server.cleanup()


def test_idle_connection_gets_goaway_and_client_reconnects(testing_pb):
    server = start_peer(SLIPWAY_PEER_IDLE_SECONDS=1)
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(PREFACE)
        start = time.monotonic()
        received = read_until_closed(sock, 15)
        assert 7 in frame_types(received), "no GOAWAY before closing the idle connection"
        assert time.monotonic() - start < 10
        # grpcio sees the GOAWAY (its channel leaves READY) and reconnects on its own for the next call.
        with grpc.insecure_channel(server.address) as channel:
            stub = testing_pb[1].TestServiceStub(channel)
            states = []
            channel.subscribe(states.append)
            assert stub.Unary(testing_pb[0].TestRequest(text="a"), timeout=5).text == "a"
            deadline = time.monotonic() + 15
            while grpc.ChannelConnectivity.READY not in states or states[-1] == grpc.ChannelConnectivity.READY:
                assert time.monotonic() < deadline, f"the idle connection was never closed: {states}"
                time.sleep(0.05)
            assert stub.Unary(testing_pb[0].TestRequest(text="b"), timeout=5).text == "b"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pki():
    directory = tempfile.mkdtemp(prefix="slipway-pki-")

    def run(command):
        subprocess.run(command, shell=True, check=True, cwd=directory, capture_output=True)

    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca")
    for name, ext in [("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")]:
        run(f"openssl req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name}")
        run(f"printf '{ext}\\n' > {name}.ext && openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext")
    return lambda f: os.path.join(directory, f)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_grpcio_over_tls_with_alpn(pki, testing_pb):
    server = start_peer(SLIPWAY_PEER_TLS_CERT=pki("server.pem"), SLIPWAY_PEER_TLS_KEY=pki("server.key"))
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=read(pki("ca.pem")))
        with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
            stub = testing_pb[1].TestServiceStub(channel)
            assert stub.Unary(testing_pb[0].TestRequest(text="tls"), timeout=10).text == "tls"
            assert [r.index for r in stub.ServerStream(testing_pb[0].TestRequest(count=50), timeout=10)] == list(range(50))
    finally:
        server.stop()


def test_grpcio_mutual_tls(pki, testing_pb):
    server = start_peer(SLIPWAY_PEER_TLS_CERT=pki("server.pem"), SLIPWAY_PEER_TLS_KEY=pki("server.key"),
                        SLIPWAY_PEER_TLS_CLIENT_CA=pki("ca.pem"))
    try:
        anonymous = grpc.ssl_channel_credentials(root_certificates=read(pki("ca.pem")))
        with grpc.secure_channel(f"localhost:{server.port}", anonymous) as channel:
            with pytest.raises(grpc.RpcError) as info:
                testing_pb[1].TestServiceStub(channel).Unary(testing_pb[0].TestRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        identified = grpc.ssl_channel_credentials(
            root_certificates=read(pki("ca.pem")), private_key=read(pki("client.key")), certificate_chain=read(pki("client.pem")))
        with grpc.secure_channel(f"localhost:{server.port}", identified) as channel:
            assert testing_pb[1].TestServiceStub(channel).Unary(testing_pb[0].TestRequest(text="m"), timeout=10).text == "m"
    finally:
        server.stop()
