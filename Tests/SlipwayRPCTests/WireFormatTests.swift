import NIOCore
import SlipwayProtobuf
import Testing

@testable import SlipwayRPC

@Suite struct TimeoutHeaderTests {
    @Test(arguments: [("1S", Int64(1_000_000_000)), ("250m", 250_000_000), ("3u", 3_000), ("7n", 7), ("2M", 120_000_000_000), ("1H", 3_600_000_000_000), ("99999999S", 99_999_999_000_000_000)])
    func parses(_ text: String, _ nanos: Int64) {
        #expect(GRPCTimeout.parse(text) == nanos)
    }

    @Test(arguments: ["", "S", "10", "1s", "123456789S", "-1S", "1.5S", "1 S"])
    func rejectsMalformed(_ text: String) {
        #expect(GRPCTimeout.parse(text) == nil)
    }

    @Test func formatsWithinEightDigitsAndRoundTrips() {
        for nanos: Int64 in [1, 999, 1_000_001, 5_000_000_000, 86_400_000_000_000] {
            let text = GRPCTimeout.format(nanoseconds: nanos)
            #expect(text.utf8.count <= 9)
            let parsed = GRPCTimeout.parse(text)!
            #expect(parsed >= nanos)  // rounds up, never shortens a deadline
        }
    }
}

@Suite struct StatusMessageTests {
    @Test func percentEncodesNonPrintableAndPercent() {
        #expect(StatusMessageCoding.encode("a b%c\n") == "a b%25c%0A")
        #expect(StatusMessageCoding.encode("é") == "%C3%A9")
    }

    @Test func roundTripsAnyText() {
        for text in ["", "plain", "100% sure", "ünïcode ✓", "line\nbreak\ttab"] {
            #expect(StatusMessageCoding.decode(StatusMessageCoding.encode(text)) == text)
        }
    }

    @Test func decodingLeavesBrokenEscapesAlone() {
        #expect(StatusMessageCoding.decode("50%") == "50%")
        #expect(StatusMessageCoding.decode("%zz") == "%zz")
    }
}

@Suite struct MetadataTests {
    @Test func base64RoundTripsEveryLength() {
        for length in 0..<20 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 * 37 + 5) }
            #expect(Base64.decode(Base64.encode(bytes)) == bytes)
        }
        #expect(Base64.encode(Array("hello".utf8)) == "aGVsbG8=")
        #expect(Base64.decode("aGVsbG8") == Array("hello".utf8))  // unpadded, as gRPC allows
        #expect(Base64.decode("a$b") == nil)
    }

    @Test func binaryValuesTravelAsBase64() throws {
        var metadata = Metadata()
        metadata.add("x-token", "abc")
        metadata.add("x-raw-bin", binary: [0, 255])
        let wire = metadata.wireHeaders()
        #expect(wire.map(\.0) == ["x-token", "x-raw-bin"])
        var decoded = Metadata()
        for (name, value) in wire { try decoded.addWire(name: name, value: value) }
        #expect(decoded == metadata)
        #expect(decoded.binary("x-raw-bin") == [0, 255])
    }

    @Test func keysAreCaseInsensitive() {
        let metadata: Metadata = ["X-Request-ID": "42"]
        #expect(metadata["x-request-id"] == "42")
    }

    @Test func malformedBinaryIsAnError() {
        var metadata = Metadata()
        #expect(throws: RPCError.self) { try metadata.addWire(name: "x-bin", value: "not base64!") }
    }
}

@Suite struct MessageFramingTests {
    func reader(limit: Int = 1024) -> LengthPrefixedMessageReader {
        LengthPrefixedMessageReader(maxMessageSize: limit, allocator: ByteBufferAllocator())
    }

    func feed(_ reader: inout LengthPrefixedMessageReader, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { reader.append($0) }
    }

    @Test func splitsMessagesAcrossArbitraryChunks() throws {
        var wire = ByteBuffer()
        for payload in [[1, 2, 3], [], [9]] as [[UInt8]] { wire.writeGRPCMessage(payload) }
        let bytes = Array(wire.readableBytesView)
        var reader = reader()
        var messages: [[UInt8]] = []
        for byte in bytes {  // one byte at a time: the worst fragmentation
            feed(&reader, [byte])
            while let message = try reader.next() { messages.append(Array(message.readableBytesView)) }
        }
        #expect(messages == [[1, 2, 3], [], [9]])
        #expect(reader.pendingBytes == 0)
    }

    @Test func refusesAnnouncedOversizeBeforeItArrives() {
        var reader = reader(limit: 10)
        feed(&reader, [0, 0, 0, 0, 11])
        #expect(throws: RPCError(.resourceExhausted, "message of 11 bytes exceeds the limit of 10 bytes")) { try reader.next() }
    }

    @Test func refusesCompressedAndUnknownFlags() {
        var compressed = reader()
        feed(&compressed, [1, 0, 0, 0, 0])
        #expect { try compressed.next() } throws: { ($0 as? RPCError)?.code == .unimplemented }
        var unknown = reader()
        feed(&unknown, [4, 0, 0, 0, 0])
        #expect { try unknown.next() } throws: { ($0 as? RPCError)?.code == .internal }
    }

    @Test func waitsForIncompleteMessages() throws {
        var reader = reader()
        feed(&reader, [0, 0, 0, 0, 3, 1])
        #expect(try reader.next() == nil)
        #expect(reader.pendingBytes == 6)
    }
}

@Suite struct ErrorMappingTests {
    struct Domain: RPCErrorConvertible {
        var rpcError: RPCError { RPCError(.failedPrecondition, "environment is locked") }
    }

    struct Plain: Error, CustomStringConvertible {
        var description: String { "disk full" }
    }

    @Test func mapsTypedErrorsOnce() {
        #expect(RPCError.from(RPCError(.notFound, "x")) == RPCError(.notFound, "x"))
        #expect(RPCError.from(Domain()) == RPCError(.failedPrecondition, "environment is locked"))
        #expect(RPCError.from(CancellationError()).code == .cancelled)
        #expect(RPCError.from(Plain()) == RPCError(.unknown, "disk full"))
    }
}
