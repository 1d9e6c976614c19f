import CProtobufC

/// A generated message whose wire form is produced and parsed by protobuf-c through its C descriptor.
public protocol ProtoCMessage: ProtoMessage {
    /// The protoc-c generated descriptor of the C struct.
    static var protoCDescriptor: UnsafePointer<ProtobufCMessageDescriptor> { get }
    /// Writes every field into a freshly initialised C message.
    func protoCWrite(to writer: ProtoCWriter)
    /// Reads every field out of an unpacked C message.
    init(protoCReader reader: ProtoCReader)
}

extension ProtoCMessage {
    public func serializedBytes() -> [UInt8] {
        let arena = ProtoArena()
        let writer = arena.message(Self.protoCDescriptor)
        protoCWrite(to: writer)
        return withExtendedLifetime(arena) { writer.pack() }
    }

    public init(serializedBuffer buffer: UnsafeRawBufferPointer) throws(ProtoDecodingError) {
        // Map keys and values are C strings in protobuf-c (a NUL would cut them short): checked on the wire.
        if let field = ProtoWireCheck.badString(Self.protoCDescriptor, buffer) {
            throw ProtoDecodingError(messageName: Self.protoMessageName, reason: "string field \(field) is not valid UTF-8 or contains a NUL byte")
        }
        var empty: UInt8 = 0
        let unpacked = withUnsafePointer(to: &empty) { emptyPointer in
            protobuf_c_message_unpack(
                Self.protoCDescriptor, nil, buffer.count,
                buffer.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? emptyPointer
            )
        }
        guard let unpacked else {
            throw ProtoDecodingError(messageName: Self.protoMessageName, reason: "malformed protobuf data (\(buffer.count) bytes)")
        }
        defer { protobuf_c_message_free_unpacked(unpacked, nil) }
        let issues = ProtoCDecodeIssues()
        self.init(protoCReader: ProtoCReader(descriptor: Self.protoCDescriptor, pointer: UnsafeRawPointer(unpacked), issues: issues))
        if let field = issues.alteredField {
            throw ProtoDecodingError(messageName: Self.protoMessageName, reason: "string field \(field) is not valid UTF-8")
        }
    }
}

/// A generated protobuf enum: an `Int32` raw value, with unknown values kept as `.unrecognized`.
public protocol ProtoEnum: RawRepresentable, Sendable, Hashable where RawValue == Int32 {
    /// The enum's first declared value (zero in proto3).
    init()
    init(rawValue: Int32)
    /// The value's name as the .proto file spells it.
    var protoName: String { get }
}
