#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus (Tests/Fuzz/corpus/<target>/): valid inputs of each kind,
from the recorded webhook deliveries and Kubernetes objects of the tests and from hand-encoded
protobuf, gRPC, HTTP/2 and DNS bytes. Rerun after changing it; libFuzzer grows the corpus from here."""
import glob
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


# protobuf wire encoding, just what the seeds need
def varint(n):
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def field(number, value):
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def message(*fields):
    return b"".join(field(n, v) for n, v in fields)


# gRPC framing: the first byte is the read size - 1.
frames = b"".join(b"\x00" + struct.pack(">I", len(m)) + m for m in [b"", b"hello", message((1, "abc"), (2, 7))])
write("grpc-framing", "three-messages", b"\x03" + frames)
write("grpc-framing", "one-read", b"\xff" + frames)
write("grpc-framing", "compressed-flag", b"\x10\x01\x00\x00\x00\x02hi")
write("grpc-framing", "announced-too-large", b"\x10\x00\x7f\xff\xff\xff")


# HTTP/2 after the preface: frames as a gRPC client sends them (HPACK literals, no Huffman).
def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


headers = b"".join(literal(n, v) for n, v in [(":method", "POST"), (":scheme", "http"), (":path", "/slipway.api.v1.Slipway/WhoAmI"),
                                              (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")])
call = frame(1, 0x04, 1, headers) + frame(0, 0x01, 1, b"\x00\x00\x00\x00\x00")
write("http2-server", "unary-call", b"\x02" + call)
write("http2-server", "ping-window-rst", b"\x04" + frame(6, 0, 0, b"12345678") + frame(8, 0, 0, struct.pack(">I", 1000)) + call + frame(3, 0, 1, struct.pack(">I", 8)))
write("http2-server", "settings-goaway", b"\x01" + frame(4, 0, 0, struct.pack(">HI", 3, 10)) + frame(7, 0, 0, struct.pack(">II", 0, 0)))
write("http2-server", "continuation", b"\x08" + frame(1, 0x00, 3, headers[:20]) + frame(9, 0x04, 3, headers[20:]))

# protobuf: the first byte picks the message type (FuzzTargets.messages, in order).
git = message((1, "https://example.com/app.git"), (2, "main"))
write("protobuf", "0-service-config", b"\x00" + message((1, git), (2, 2)))
write("protobuf", "1-deploy-request", b"\x01" + message((1, "env_1"), (2, "svc_1"), (3, message((1, "svc_1"), (2, "abc123")))))
write("protobuf", "2-rollback", b"\x02" + message((1, "svc_1"), (2, "rel_1"), (4, 1)))
write("protobuf", "3-build-request", b"\x03" + message((1, "b1"), (2, message((1, "https://example.com/a.git"), (2, "a" * 40)))))
write("protobuf", "4-cluster-deploy", b"\x04" + message((1, message((1, "env"), (2, "svc"))), (2, "registry/app:1"), (3, 3)))
write("protobuf", "5-set-route", b"\x05" + message((1, message((1, message((1, "env"), (2, "svc")))))))
write("protobuf", "6-append", b"\x06" + message((1, 9), (2, message((3, 1), (7, "a line")))))
write("protobuf", "7-log-line", b"\x07" + message((2, 3), (3, 1700000000000000000), (5, 3), (7, "hello")))

# webhooks: the first byte picks the provider (0 GitHub, 1 GitLab, 2 Gitea, 3 Bitbucket).
providers = {"github": 0, "gitlab": 1, "gitea": 2, "bitbucket": 3}
for path in sorted(glob.glob(os.path.join(TESTS, "SlipwayGatewayTests", "Fixtures", "webhooks", "*.json"))):
    name = os.path.basename(path)
    with open(path, "rb") as f:
        write("webhooks", name, bytes([providers[name.split("-")[0]]]) + f.read())

# nginx-config: a 2-byte length, a SetRouteRequest, a SetBackendsRequest.
key = message((1, "env_1"), (2, "svc_1"))
for name, route, backends in [
    ("plain", message((1, key), (2, "web"), (3, "prod")), ["10.89.0.2:8080"]),
    ("domains-and-path", message((1, key), (2, "api"), (3, "staging"), (4, "api.example.com"), (4, "www.example.org"), (5, "/v1")), ["10.89.0.2:8080", "[fd00::2]:80"]),
    ("grpc", message((1, key), (2, "grpc"), (3, "prod"), (6, 2)), []),
]:
    request = message((1, route))
    write("nginx-config", name, struct.pack(">H", len(request)) + request + message(*[(2, b) for b in backends]))

# kubernetes-status: the tests' recorded API objects.
for path in sorted(glob.glob(os.path.join(TESTS, "SlipwayClusterTests", "Fixtures", "kubernetes", "*.json"))):
    with open(path, "rb") as f:
        write("kubernetes-status", os.path.basename(path), f.read())


# dns-answer: a query's answer with A, AAAA and CNAME records (name compression included).
def name(text):
    return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".")) + b"\x00"


question = name("www.example.com") + struct.pack(">HH", 1, 1)
answers = (b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 300, len(name("example.com"))) + name("example.com")
           + b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4) + bytes([93, 184, 216, 34])
           + b"\xc0\x0c" + struct.pack(">HHIH", 28, 1, 300, 16) + bytes(15) + b"\x01")
write("dns-answer", "a-aaaa-cname", struct.pack(">HHHHHH", 0x1234, 0x8180, 1, 3, 0, 0) + question + answers)
write("dns-answer", "nxdomain", struct.pack(">HHHHHH", 0x4321, 0x8183, 1, 0, 0, 0) + question)
