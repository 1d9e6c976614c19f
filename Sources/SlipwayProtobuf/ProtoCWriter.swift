import CProtobufC

/// A C value that protobuf-c stores in a message field with the same memory layout as the Swift value.
public protocol ProtoCScalar: Hashable, Sendable {}
extension Int32: ProtoCScalar {}
extension Int64: ProtoCScalar {}
extension UInt32: ProtoCScalar {}
extension UInt64: ProtoCScalar {}
extension Float: ProtoCScalar {}
extension Double: ProtoCScalar {}

/// Fills one protobuf-c C message in arena memory; fields are addressed by their index in the C descriptor.
///
/// The index of a field is its rank when the message's fields are sorted by number, which is the
/// order of `ProtobufCMessageDescriptor.fields` in protoc-c output.
public struct ProtoCWriter {
    /// The arena that owns this message and everything it points to.
    public let arena: ProtoArena
    /// The C descriptor of the message type.
    public let descriptor: UnsafePointer<ProtobufCMessageDescriptor>
    /// The C message (a `ProtobufCMessage` header followed by the fields).
    public let pointer: UnsafeMutableRawPointer

    @inline(__always)
    func field(_ index: Int) -> UnsafePointer<ProtobufCFieldDescriptor> {
        assert(index < Int(descriptor.pointee.n_fields), "field index out of range")
        return descriptor.pointee.fields + index
    }

    /// Records presence for oneof members (the case field) and proto2 optional scalars (`has_`).
    @inline(__always)
    func markPresent(_ field: UnsafePointer<ProtobufCFieldDescriptor>) {
        if field.pointee.flags & UInt32(PROTOBUF_C_FIELD_FLAG_ONEOF.rawValue) != 0 {
            pointer.storeBytes(of: field.pointee.id, toByteOffset: Int(field.pointee.quantifier_offset), as: UInt32.self)
        } else if field.pointee.label == PROTOBUF_C_LABEL_OPTIONAL {
            switch field.pointee.type {
            case PROTOBUF_C_TYPE_STRING, PROTOBUF_C_TYPE_MESSAGE: break
            default:
                pointer.storeBytes(of: 1, toByteOffset: Int(field.pointee.quantifier_offset), as: protobuf_c_boolean.self)
            }
        }
    }

    @inline(__always)
    func store<T>(_ value: T, _ field: UnsafePointer<ProtobufCFieldDescriptor>) {
        pointer.storeBytes(of: value, toByteOffset: Int(field.pointee.offset), as: T.self)
        markPresent(field)
    }

    /// Sets a numeric field (any integer kind, float, double, or an enum's raw value).
    public func set<T: ProtoCScalar>(_ index: Int, _ value: T) { store(value, field(index)) }

    /// Sets a bool field.
    public func set(_ index: Int, _ value: Bool) { store(protobuf_c_boolean(value ? 1 : 0), field(index)) }

    /// Sets a string field (as bytes where the C code holds it as bytes: embedded NULs survive).
    public func set(_ index: Int, _ value: String) {
        let field = field(index)
        if value.isEmpty && field.pointee.flags & UInt32(PROTOBUF_C_FIELD_FLAG_ONEOF.rawValue) == 0 { return }
        if field.pointee.type == PROTOBUF_C_TYPE_BYTES {
            store(arena.binary(Array(value.utf8)), field)
        } else {
            store(UnsafeMutablePointer<CChar>?(arena.cString(value)), field)
        }
    }

    /// Sets a bytes field.
    public func set(_ index: Int, _ value: [UInt8]) { store(arena.binary(value), field(index)) }

    /// Sets a message field.
    public func set<M: ProtoCMessage>(_ index: Int, _ value: M) {
        let field = field(index)
        let child = arena.message(field.pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self))
        value.protoCWrite(to: child)
        store(UnsafeMutableRawPointer?(child.pointer), field)
    }

    /// Sets a message field when `value` is not nil.
    public func set<M: ProtoCMessage>(_ index: Int, _ value: M?) {
        if let value { set(index, value) }
    }

    /// Stores `count` elements of `elementSize` bytes each, written by `fill`, as a repeated field.
    func setRepeated(_ index: Int, count: Int, elementSize: Int, _ fill: (UnsafeMutableRawPointer) -> Void) {
        guard count > 0 else { return }
        let field = field(index)
        let elements = arena.allocate(byteCount: count * elementSize)
        fill(elements)
        pointer.storeBytes(of: count, toByteOffset: Int(field.pointee.quantifier_offset), as: Int.self)
        pointer.storeBytes(of: UnsafeMutableRawPointer?(elements), toByteOffset: Int(field.pointee.offset), as: UnsafeMutableRawPointer?.self)
    }

    /// Sets a repeated numeric (or enum raw value) field.
    public func set<T: ProtoCScalar>(_ index: Int, _ values: [T]) {
        setRepeated(index, count: values.count, elementSize: MemoryLayout<T>.stride) { elements in
            values.withUnsafeBytes { elements.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        }
    }

    /// Sets a repeated bool field.
    public func set(_ index: Int, _ values: [Bool]) {
        set(index, values.map { Int32($0 ? 1 : 0) })
    }

    /// Sets a repeated string field.
    public func set(_ index: Int, _ values: [String]) {
        if field(index).pointee.type == PROTOBUF_C_TYPE_BYTES {
            set(index, values.map { Array($0.utf8) })
            return
        }
        setRepeated(index, count: values.count, elementSize: MemoryLayout<UnsafeMutablePointer<CChar>?>.stride) { elements in
            for (i, value) in values.enumerated() {
                elements.storeBytes(of: UnsafeMutablePointer<CChar>?(arena.cString(value)), toByteOffset: i * MemoryLayout<UnsafeMutablePointer<CChar>?>.stride, as: UnsafeMutablePointer<CChar>?.self)
            }
        }
    }

    /// Sets a repeated bytes field.
    public func set(_ index: Int, _ values: [[UInt8]]) {
        setRepeated(index, count: values.count, elementSize: MemoryLayout<ProtobufCBinaryData>.stride) { elements in
            for (i, value) in values.enumerated() {
                elements.storeBytes(of: arena.binary(value), toByteOffset: i * MemoryLayout<ProtobufCBinaryData>.stride, as: ProtobufCBinaryData.self)
            }
        }
    }

    /// Stores a repeated message (or map entry) field, one child message per element filled by `fill`.
    func setMessages<C: Collection>(_ index: Int, _ values: C, _ fill: (ProtoCWriter, C.Element) -> Void) {
        let childDescriptor = field(index).pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
        let stride = MemoryLayout<UnsafeMutableRawPointer?>.stride
        setRepeated(index, count: values.count, elementSize: stride) { elements in
            for (i, value) in values.enumerated() {
                let child = arena.message(childDescriptor)
                fill(child, value)
                elements.storeBytes(of: UnsafeMutableRawPointer?(child.pointer), toByteOffset: i * stride, as: UnsafeMutableRawPointer?.self)
            }
        }
    }

    /// Sets a repeated message field.
    public func set<M: ProtoCMessage>(_ index: Int, _ values: [M]) {
        setMessages(index, values) { child, value in value.protoCWrite(to: child) }
    }

    /// Sets a map field; `fill` writes one entry's key (index 0) and value (index 1).
    /// Entries are written in the order given, so pass them sorted for a deterministic encoding.
    public func setMap<C: Collection>(_ index: Int, _ entries: C, _ fill: (ProtoCWriter, C.Element) -> Void) {
        setMessages(index, entries, fill)
    }

    /// Packs the message to its wire form.
    public func pack() -> [UInt8] {
        let message = pointer.assumingMemoryBound(to: ProtobufCMessage.self)
        let size = protobuf_c_message_get_packed_size(message)
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            initialized = size == 0 ? 0 : protobuf_c_message_pack(message, buffer.baseAddress!)
        }
    }
}
