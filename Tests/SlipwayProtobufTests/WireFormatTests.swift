import SlipwayProtobuf
import SlipwayProtos
import Testing

// Expected bytes worked out by hand from https://protobuf.dev/programming-guides/encoding/.

@Test func varintFieldMatchesTheSpec() throws {
    var request = Slipway_Testing_V1_TestRequest()
    request.count = 150  // field 2, wire type 0: tag 0x10, varint 150 = 96 01
    #expect(request.serializedBytes() == [0x10, 0x96, 0x01])
    #expect(try Slipway_Testing_V1_TestRequest(serializedBytes: [0x10, 0x96, 0x01]).count == 150)
}

@Test func stringFieldMatchesTheSpec() throws {
    var request = Slipway_Testing_V1_TestRequest()
    request.text = "testing"  // field 1, wire type 2
    #expect(request.serializedBytes() == [0x0A, 0x07, 0x74, 0x65, 0x73, 0x74, 0x69, 0x6E, 0x67])
}

@Test func scalarEncodingsMatchTheSpec() {
    func bytes(_ build: (inout Slipway_Testing_V1_AllTypes) -> Void) -> [UInt8] {
        var message = Slipway_Testing_V1_AllTypes()
        build(&message)
        return message.serializedBytes()
    }
    // Negative int32 is sign-extended to a 10-byte varint.
    #expect(bytes { $0.fInt32 = -1 } == [0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
    // sint32/sint64 use zigzag: -1 → 1, -2 → 3.
    #expect(bytes { $0.fSint32 = -1 } == [0x28, 0x01])
    #expect(bytes { $0.fSint64 = -2 } == [0x30, 0x03])
    // fixed32 is 4 little-endian bytes (wire type 5), double 8 bytes (wire type 1).
    #expect(bytes { $0.fFixed32 = 1 } == [0x3D, 0x01, 0x00, 0x00, 0x00])
    #expect(bytes { $0.fDouble = 1.0 } == [0x69, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xF0, 0x3F])
    #expect(bytes { $0.fBool = true } == [0x58, 0x01])
    // Field 16 (enum): tag 16 << 3 = 128 = 80 01.
    #expect(bytes { $0.fColor = .blue } == [0x80, 0x01, 0x03])
}

@Test func presenceAndContainersMatchTheSpec() {
    func bytes(_ build: (inout Slipway_Testing_V1_AllTypes) -> Void) -> [UInt8] {
        var message = Slipway_Testing_V1_AllTypes()
        build(&message)
        return message.serializedBytes()
    }
    // proto3 optional: a zero that is set is written (field 20: tag A0 01).
    #expect(bytes { $0.oInt32 = 0 } == [0xA0, 0x01, 0x00])
    // A oneof member is written even when empty (field 50, wire type 2: tag 92 03).
    #expect(bytes { $0.choice = .cText("") } == [0x92, 0x03, 0x00])
    // A present empty sub-message (field 19: tag 9A 01), and one with x = 1.
    #expect(bytes { $0.fPoint = .init() } == [0x9A, 0x01, 0x00])
    #expect(bytes { $0.fPoint = point(1, 0, "") } == [0x9A, 0x01, 0x02, 0x08, 0x01])
    // Repeated scalars are packed (field 30: tag F2 01): 3, 270, 86942.
    #expect(bytes { $0.rInt32 = [3, 270, 86942] } == [0xF2, 0x01, 0x06, 0x03, 0x8E, 0x02, 0x9E, 0xA7, 0x05])
    // A map entry is a message with key = 1 and value = 2 (field 60: tag E2 03).
    #expect(bytes { $0.mStringString = ["a": "b"] } == [0xE2, 0x03, 0x06, 0x0A, 0x01, 0x61, 0x12, 0x01, 0x62])
}

@Test func decodesUnpackedRepeatedScalars() throws {
    // Parsers must accept the unpacked form of a packed field too: field 30 as two varints.
    let message = try Slipway_Testing_V1_AllTypes(serializedBytes: [0xF0, 0x01, 0x03, 0xF0, 0x01, 0x04])
    #expect(message.rInt32 == [3, 4])
}

@Test func unknownEnumValuesSurvive() throws {
    // Field 16 (Color) = 99, which Color does not declare.
    let message = try Slipway_Testing_V1_AllTypes(serializedBytes: [0x80, 0x01, 0x63])
    #expect(message.fColor == .unrecognized(99))
    #expect(message.fColor.rawValue == 99)
    #expect(message.serializedBytes() == [0x80, 0x01, 0x63])
    #expect(Slipway_Testing_V1_Color(rawValue: -1) == .negative)
    #expect(Grpc_Health_V1_HealthCheckResponse.ServingStatus(rawValue: 3) == .serviceUnknown)
    var response = Grpc_Health_V1_HealthCheckResponse()
    response.status = .unrecognized(17)
    #expect(try Grpc_Health_V1_HealthCheckResponse(serializedBytes: response.serializedBytes()).status == .unrecognized(17))
}

@Test func garbageThrowsDecodingError() {
    let inputs: [[UInt8]] = [
        [0xFF, 0xFF, 0xFF],  // truncated varint tag
        [0x0A, 0x05, 0x61],  // length runs past the end
        [0x9A, 0x01, 0x03, 0x08],  // sub-message shorter than its length
        [0x08],  // tag without a value
        [0x07, 0x00],  // wire type 7 does not exist
    ]
    for input in inputs {
        #expect(throws: ProtoDecodingError.self) { try Slipway_Testing_V1_AllTypes(serializedBytes: input) }
    }
    do {
        _ = try Grpc_Health_V1_HealthCheckRequest(serializedBytes: [0x0A, 0x7F])
        Issue.record("expected an error")
    } catch {
        #expect(error.messageName == "grpc.health.v1.HealthCheckRequest")
    }
}

@Test func servicesDescribeTheirMethods() {
    #expect(Grpc_Health_V1_Health.name == "grpc.health.v1.Health")
    #expect(Grpc_Health_V1_Health.Check.path == "/grpc.health.v1.Health/Check")
    #expect(!Grpc_Health_V1_Health.Check.serverStreaming)
    #expect(Grpc_Health_V1_Health.Watch.serverStreaming && !Grpc_Health_V1_Health.Watch.clientStreaming)
    #expect(Grpc_Reflection_V1_ServerReflection.ServerReflectionInfo.path == "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    #expect(Grpc_Reflection_V1alpha_ServerReflection.ServerReflectionInfo.clientStreaming)
    #expect(Slipway_Testing_V1_TestService.ClientStream.clientStreaming && !Slipway_Testing_V1_TestService.ClientStream.serverStreaming)
    #expect(Slipway_Testing_V1_TestService.Bidi.clientStreaming && Slipway_Testing_V1_TestService.Bidi.serverStreaming)
}

@Test func fileDescriptorsCarryProtocsDescription() {
    let health = Grpc_Health_V1_Health_proto.descriptor
    #expect(health.name == "grpc/health/v1/health.proto")
    #expect(health.symbols.contains("grpc.health.v1.HealthCheckResponse.ServingStatus"))
    #expect(health.symbols.contains("grpc.health.v1.Health.Watch"))
    // FileDescriptorProto field 1 (name) comes first: 0A, length, "grpc/health/v1/health.proto".
    let name = Array("grpc/health/v1/health.proto".utf8)
    #expect(Array(health.serializedDescriptor.prefix(2 + name.count)) == [0x0A, UInt8(name.count)] + name)
    let testing = Slipway_Testing_V1_Testing_proto.descriptor
    #expect(testing.symbols.contains("slipway.testing.v1.AllTypes.Inner.Deeper"))
    #expect(testing.symbols.contains("slipway.testing.v1.TestService.Bidi"))
    #expect(Grpc_Reflection_V1alpha_Reflection_proto.descriptor.symbols.contains("grpc.reflection.v1alpha.ServerReflection"))
}

@Test func base64RoundTrips() {
    for count in 0..<10 {
        let bytes = (0..<count).map { UInt8($0 * 37 & 0xFF) }
        #expect(Base64.decode(Base64.encode(bytes)) == bytes)
    }
    #expect(Base64.encode(Array("Man".utf8)) == "TWFu")
    #expect(Base64.decode("TW!u") == nil)
    #expect(Base64.decode("TW\nFu") == nil)
    #expect(Base64.decode("TW\nFu", skippingLineBreaks: true) == Array("Man".utf8))
    #expect(Base64.decode("_-8") == [0xFF, 0xEF])
    #expect(Base64.decode("/+8=") == [0xFF, 0xEF])
}

@Test func aStringThatWouldBeAlteredIsRefusedNamingTheField() throws {
    // A plain string field keeps an embedded NUL (it is bytes in the C code): "a\0b" arrives as sent.
    #expect(try Slipway_Testing_V1_TestRequest(serializedBytes: [0x0A, 0x03, 0x61, 0x00, 0x62]).text == "a\u{0}b")
    do {
        _ = try Slipway_Testing_V1_TestRequest(serializedBytes: [0x0A, 0x01, 0xFF])
        Issue.record("invalid UTF-8 was accepted")
    } catch {
        #expect(error.reason.contains("text") && error.reason.contains("UTF-8"), "\(error.reason)")
    }
    // Invalid UTF-8: a lone continuation byte, an overlong '/', a surrogate, past U+10FFFF.
    for bad: [UInt8] in [[0x80], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82]] {
        #expect(throws: ProtoDecodingError.self, "\(bad)") { try Slipway_Testing_V1_TestRequest(serializedBytes: [0x0A, UInt8(bad.count)] + bad) }
    }
    // Valid multi-byte text round-trips untouched.
    var request = Slipway_Testing_V1_TestRequest()
    request.text = "héllo — 日本 🚀"
    #expect(try Slipway_Testing_V1_TestRequest(serializedBytes: request.serializedBytes()).text == request.text)
    // Nested: a map entry's value (string → string) is checked too.
    var nested = Slipway_Pipeline_V1_ServiceConfig()
    nested.environmentVariables = ["KEY": "ok"]
    var bytes = nested.serializedBytes()
    let index = try #require(bytes.lastIndex(of: UInt8(ascii: "k")))
    bytes[index] = 0
    #expect(throws: ProtoDecodingError.self) { try Slipway_Pipeline_V1_ServiceConfig(serializedBytes: bytes) }
}
