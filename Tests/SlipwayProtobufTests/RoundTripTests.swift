import SlipwayProtobuf
import SlipwayProtos
import Testing

/// A message with every field kind set to a value that is not the default.
func fullyPopulated() -> Slipway_Testing_V1_AllTypes {
    var message = Slipway_Testing_V1_AllTypes()
    message.fInt32 = Int32.min
    message.fInt64 = Int64.min
    message.fUint32 = UInt32.max
    message.fUint64 = UInt64.max
    message.fSint32 = Int32.min
    message.fSint64 = Int64.min
    message.fFixed32 = 0xDEAD_BEEF
    message.fFixed64 = UInt64.max - 1
    message.fSfixed32 = -123_456
    message.fSfixed64 = Int64.max
    message.fBool = true
    message.fFloat = -Float.infinity
    message.fDouble = Double.leastNonzeroMagnitude
    message.fString = "héllo wörld ✓ 日本語 🚀"
    message.fBytes = [0, 1, 2, 0xFF, 0]
    message.fColor = .blue
    message.fMood = .sad
    var inner = Slipway_Testing_V1_AllTypes.Inner()
    inner.name = "inner"
    inner.values = [1, -1, Int64.max]
    inner.deeper = .init()
    inner.deeper?.note = "deep"
    inner.mood = .happy
    message.fInner = inner
    message.fPoint = Slipway_Testing_V1_Point()  // present but empty
    message.oInt32 = 0
    message.oInt64 = -7
    message.oBool = false
    message.oDouble = .nan
    message.oString = ""
    message.oBytes = []
    message.oColor = .unspecified
    message.oUint64 = 0
    message.oSint32 = -1
    message.oFloat = .greatestFiniteMagnitude
    message.rInt32 = [0, -1, Int32.max]
    message.rInt64 = [Int64.min, 0]
    message.rUint32 = [1, 2, 3]
    message.rUint64 = [UInt64.max]
    message.rSint32 = [-1, 1, Int32.min]
    message.rSint64 = [Int64.min, Int64.max]
    message.rFixed32 = [7]
    message.rFixed64 = [8, 9]
    message.rSfixed32 = [-10]
    message.rSfixed64 = [-11, 12]
    message.rBool = [true, false, true]
    message.rFloat = [1.5, -0.0, .infinity]
    message.rDouble = [.pi, -.infinity]
    message.rString = ["", "a", "ünïcode"]
    message.rBytes = [[], [1], Array(repeating: 0xAB, count: 1000)]
    message.rPoint = [.init(), point(1, 2, "p")]
    message.rColor = [.red, .negative, .unrecognized(77)]
    message.rMood = [.happy, .unspecified]
    message.rInner = [inner, .init()]
    message.choice = .cPoint(point(-5, 5, "choice"))
    message.mStringString = ["": "empty key", "k": "", "ключ": "значение"]
    message.mStringPoint = ["origin": .init(), "p": point(3, 4, "")]
    message.mInt64String = [Int64.min: "min", 0: "zero", Int64.max: "max"]
    message.mInt32Color = [1: .green, -1: .negative, 5: .unrecognized(99)]
    message.mUint32Bytes = [0: [], 1: [0, 0], UInt32.max: Array(0...255)]
    message.mBoolDouble = [true: 1.0, false: -2.5]
    return message
}

func point(_ x: Int32, _ y: Int32, _ label: String) -> Slipway_Testing_V1_Point {
    var point = Slipway_Testing_V1_Point()
    point.x = x
    point.y = y
    point.label = label
    return point
}

@Test func roundTripsEveryFieldKind() throws {
    let original = fullyPopulated()
    let bytes = original.serializedBytes()
    let decoded = try Slipway_Testing_V1_AllTypes(serializedBytes: bytes)
    // NaN is never equal to itself, so compare it separately.
    #expect(decoded.oDouble?.isNaN == true)
    var expected = original
    expected.oDouble = nil
    var actual = decoded
    actual.oDouble = nil
    #expect(actual == expected)
    #expect(decoded.fFloat == -.infinity)
    #expect(decoded.rFloat[1].sign == .minus)
    #expect(decoded.fString == "héllo wörld ✓ 日本語 🚀")
    #expect(decoded.rBytes[2].count == 1000)
    #expect(decoded.fPoint == Slipway_Testing_V1_Point())
    #expect(decoded.fInner?.deeper?.note == "deep")
    // Encoding is deterministic (maps are written in key order).
    #expect(decoded.serializedBytes() == bytes)
}

@Test func roundTripsEachOneofMember() throws {
    let members: [Slipway_Testing_V1_AllTypes.OneOf_Choice] = [
        .cText("text"), .cText(""), .cNumber(0), .cNumber(Int64.min), .cPoint(.init()), .cPoint(point(1, 1, "x")),
        .cBytes([]), .cBytes([1, 2]), .cColor(.unspecified), .cColor(.unrecognized(1234)),
    ]
    for member in members {
        var message = Slipway_Testing_V1_AllTypes()
        message.choice = member
        let decoded = try Slipway_Testing_V1_AllTypes(serializedBytes: message.serializedBytes())
        #expect(decoded.choice == member)
    }
    #expect(try Slipway_Testing_V1_AllTypes(serializedBytes: Slipway_Testing_V1_AllTypes().serializedBytes()).choice == nil)
}

@Test func roundTripsLargeBytes() throws {
    var request = Slipway_Testing_V1_TestRequest()
    request.payload = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
    request.text = String(repeating: "x", count: 100_000)
    let decoded = try Slipway_Testing_V1_TestRequest(serializedBytes: request.serializedBytes())
    #expect(decoded == request)
}

@Test func defaultMessagesEncodeToNothing() throws {
    #expect(Slipway_Testing_V1_AllTypes().serializedBytes() == [])
    #expect(Slipway_Testing_V1_Empty().serializedBytes() == [])
    #expect(Grpc_Health_V1_HealthCheckResponse().serializedBytes() == [])
    #expect(try Slipway_Testing_V1_AllTypes(serializedBytes: []) == Slipway_Testing_V1_AllTypes())
    #expect(try Slipway_Testing_V1_Empty(serializedBytes: [UInt8]()) == Slipway_Testing_V1_Empty())
}

@Test func keywordNamedFieldsWork() throws {
    var message = Slipway_Testing_V1_Keywords()
    message.type = "t"
    message.default = 3
    message.self_p = true
    message.protocol = "p"
    message.kind = .class("c")
    let decoded = try Slipway_Testing_V1_Keywords(serializedBytes: message.serializedBytes())
    #expect(decoded == message)
}

@Test func reflectionMessagesRoundTrip() throws {
    var request = Grpc_Reflection_V1_ServerReflectionRequest()
    request.host = "localhost"
    request.messageRequest = .fileContainingSymbol("grpc.health.v1.Health")
    var response = Grpc_Reflection_V1_ServerReflectionResponse()
    response.validHost = "localhost"
    response.originalRequest = request
    var files = Grpc_Reflection_V1_FileDescriptorResponse()
    files.fileDescriptorProto = [Grpc_Health_V1_Health_proto.descriptor.serializedDescriptor]
    response.messageResponse = .fileDescriptorResponse(files)
    let decoded = try Grpc_Reflection_V1_ServerReflectionResponse(serializedBytes: response.serializedBytes())
    #expect(decoded == response)

    // v1 and v1alpha share field numbers, so their wire forms are interchangeable.
    let alpha = try Grpc_Reflection_V1alpha_ServerReflectionResponse(serializedBytes: response.serializedBytes())
    #expect(alpha.serializedBytes() == response.serializedBytes())
}

@Test func stringsKeepEmbeddedNULs() throws {
    var message = Slipway_Testing_V1_AllTypes()
    message.fString = "a\u{0}b"
    message.oString = "\u{0}"
    message.rString = ["x\u{0}", "", "\u{0}\u{0}y"]
    let decoded = try Slipway_Testing_V1_AllTypes(serializedBytes: message.serializedBytes())
    #expect(decoded.fString == "a\u{0}b")
    #expect(decoded.oString == "\u{0}")
    #expect(decoded.rString == ["x\u{0}", "", "\u{0}\u{0}y"])
    // The wire form is protobuf's string encoding: field 14, length 3, the UTF-8 bytes.
    var only = Slipway_Testing_V1_AllTypes()
    only.fString = "a\u{0}b"
    #expect(only.serializedBytes() == [0x72, 3, 0x61, 0, 0x62])
}
