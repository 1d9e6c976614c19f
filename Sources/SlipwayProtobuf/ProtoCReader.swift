import CProtobufC

/// What a decode had to alter: the first string field that was not valid UTF-8 (read with
/// U+FFFD in place of the bad bytes). Shared by the readers of one message tree, so that the
/// decode refuses the message rather than hand over text that differs from what was sent.
public final class ProtoCDecodeIssues {
    public private(set) var alteredField: String?

    public init() {}

    func record(_ field: UnsafePointer<ProtobufCFieldDescriptor>) {
        if alteredField == nil { alteredField = String(cString: field.pointee.name) }
    }
}

/// Reads fields out of an unpacked protobuf-c C message; fields are addressed by their index in the C descriptor.
public struct ProtoCReader {
    /// The C descriptor of the message type.
    public let descriptor: UnsafePointer<ProtobufCMessageDescriptor>
    /// The C message.
    public let pointer: UnsafeRawPointer
    /// Where altered strings are noted (nil: nowhere).
    let issues: ProtoCDecodeIssues?

    public init(descriptor: UnsafePointer<ProtobufCMessageDescriptor>, pointer: UnsafeRawPointer, issues: ProtoCDecodeIssues? = nil) {
        self.descriptor = descriptor
        self.pointer = pointer
        self.issues = issues
    }

    @inline(__always)
    func field(_ index: Int) -> UnsafePointer<ProtobufCFieldDescriptor> {
        assert(index < Int(descriptor.pointee.n_fields), "field index out of range")
        return descriptor.pointee.fields + index
    }

    @inline(__always)
    func load<T>(_ field: UnsafePointer<ProtobufCFieldDescriptor>, as type: T.Type) -> T {
        pointer.loadUnaligned(fromByteOffset: Int(field.pointee.offset), as: T.self)
    }

    /// Whether a field with explicit presence (oneof member, proto3 `optional`) is set; true for others.
    public func has(_ index: Int) -> Bool {
        let field = field(index)
        if field.pointee.flags & UInt32(PROTOBUF_C_FIELD_FLAG_ONEOF.rawValue) != 0 {
            return oneofCase(index) == field.pointee.id
        }
        switch field.pointee.type {
        case PROTOBUF_C_TYPE_STRING, PROTOBUF_C_TYPE_MESSAGE:
            return load(field, as: UnsafeRawPointer?.self) != nil
        default:
            if field.pointee.label == PROTOBUF_C_LABEL_OPTIONAL {
                return pointer.loadUnaligned(fromByteOffset: Int(field.pointee.quantifier_offset), as: protobuf_c_boolean.self) != 0
            }
            return true
        }
    }

    /// The field number of the member that is set in the oneof containing field `index`, or 0.
    public func oneofCase(_ index: Int) -> UInt32 {
        pointer.loadUnaligned(fromByteOffset: Int(field(index).pointee.quantifier_offset), as: UInt32.self)
    }

    /// A numeric field (or an enum's raw value).
    public func get<T: ProtoCScalar>(_ index: Int, as type: T.Type = T.self) -> T { load(field(index), as: T.self) }

    /// A bool field.
    public func bool(_ index: Int) -> Bool { load(field(index), as: protobuf_c_boolean.self) != 0 }

    /// A string field. Fields the C code holds as bytes (every plain `string` field, see
    /// scripts/generate-protos.sh) keep embedded NULs; map keys and values are C strings.
    public func string(_ index: Int) -> String {
        let field = field(index)
        if field.pointee.type == PROTOBUF_C_TYPE_BYTES {
            return string(load(field, as: ProtobufCBinaryData.self), field)
        }
        guard let cString = load(field, as: UnsafePointer<CChar>?.self) else { return "" }
        return String(cString: cString)
    }

    func string(_ data: ProtobufCBinaryData, _ field: UnsafePointer<ProtobufCFieldDescriptor>) -> String {
        guard data.len > 0, let base = data.data else { return "" }
        let buffer = UnsafeBufferPointer(start: base, count: data.len)
        if let text = String(validating: buffer, as: UTF8.self) { return text }
        issues?.record(field)
        return String(decoding: buffer, as: UTF8.self)
    }

    /// A bytes field.
    public func bytes(_ index: Int) -> [UInt8] { Self.bytes(load(field(index), as: ProtobufCBinaryData.self)) }

    static func bytes(_ data: ProtobufCBinaryData) -> [UInt8] {
        guard data.len > 0, let base = data.data else { return [] }
        return Array(UnsafeBufferPointer(start: base, count: data.len))
    }

    /// A message field, nil when absent.
    public func message<M: ProtoCMessage>(_ index: Int, as type: M.Type = M.self) -> M? {
        let field = field(index)
        guard let child = load(field, as: UnsafeRawPointer?.self) else { return nil }
        return M(protoCReader: ProtoCReader(descriptor: field.pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self), pointer: child, issues: issues))
    }

    /// The element count and element base address of a repeated field.
    func repeated(_ index: Int) -> (UnsafePointer<ProtobufCFieldDescriptor>, Int, UnsafeRawPointer?) {
        let field = field(index)
        let count = pointer.loadUnaligned(fromByteOffset: Int(field.pointee.quantifier_offset), as: Int.self)
        return (field, count, load(field, as: UnsafeRawPointer?.self))
    }

    /// A repeated numeric (or enum raw value) field.
    public func get<T: ProtoCScalar>(_ index: Int, as type: [T].Type = [T].self) -> [T] {
        let (_, count, base) = repeated(index)
        guard count > 0, let base else { return [] }
        return Array(UnsafeBufferPointer(start: base.assumingMemoryBound(to: T.self), count: count))
    }

    /// A repeated bool field.
    public func bools(_ index: Int) -> [Bool] { get(index, as: [Int32].self).map { $0 != 0 } }

    /// A repeated string field.
    public func strings(_ index: Int) -> [String] {
        let (field, count, base) = repeated(index)
        guard count > 0, let base else { return [] }
        if field.pointee.type == PROTOBUF_C_TYPE_BYTES {
            return UnsafeBufferPointer(start: base.assumingMemoryBound(to: ProtobufCBinaryData.self), count: count).map { string($0, field) }
        }
        return UnsafeBufferPointer(start: base.assumingMemoryBound(to: UnsafePointer<CChar>?.self), count: count).map {
            $0.map { String(cString: $0) } ?? ""
        }
    }

    /// A repeated bytes field.
    public func bytesArray(_ index: Int) -> [[UInt8]] {
        let (_, count, base) = repeated(index)
        guard count > 0, let base else { return [] }
        return UnsafeBufferPointer(start: base.assumingMemoryBound(to: ProtobufCBinaryData.self), count: count).map(Self.bytes)
    }

    /// Reads each element of a repeated message (or map entry) field with `read`.
    func messages<T>(_ index: Int, _ read: (ProtoCReader) -> T) -> [T] {
        let (field, count, base) = repeated(index)
        guard count > 0, let base else { return [] }
        let childDescriptor = field.pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
        return UnsafeBufferPointer(start: base.assumingMemoryBound(to: UnsafeRawPointer?.self), count: count).compactMap {
            $0.map { read(ProtoCReader(descriptor: childDescriptor, pointer: $0, issues: issues)) }
        }
    }

    /// A repeated message field.
    public func messages<M: ProtoCMessage>(_ index: Int, as type: M.Type = M.self) -> [M] {
        messages(index) { M(protoCReader: $0) }
    }

    /// A map field; `read` returns one entry's key (index 0) and value (index 1). Later duplicates win.
    public func map<K: Hashable, V>(_ index: Int, _ read: (ProtoCReader) -> (K, V)) -> [K: V] {
        Dictionary(messages(index, read), uniquingKeysWith: { _, last in last })
    }
}
