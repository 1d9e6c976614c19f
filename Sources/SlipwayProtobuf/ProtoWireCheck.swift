import CProtobufC
import Synchronization

/// What protobuf-c does not check before it hands a string over. Plain `string` fields are bytes in
/// the C code (scripts/generate-protos.sh; ``ProtoCReader`` checks their UTF-8), but map keys and
/// values stay C strings: a NUL inside cuts them short, and invalid UTF-8 would be repaired with
/// U+FFFD by `String(cString:)`. Either way the decoded text would differ from what was sent,
/// silently. This walks the wire form once with the message's C descriptor and names the first
/// C-string field (in nested messages and map entries too) that is not valid UTF-8 or holds a NUL,
/// so the message is refused instead.
enum ProtoWireCheck {
    /// Nesting followed at most (deeper messages are left to protobuf-c's own checks).
    static let maxDepth = 64

    /// Per message type (its descriptor's address): whether a C-string field can occur in it at
    /// any depth. Most types have none (plain strings are bytes in the C code), and for those the
    /// walk is skipped: decoding a 10,000-line log batch need not read its bytes twice.
    private static let reachesCString = Mutex<[UInt: Bool]>([:])

    static func needsWalk(_ descriptor: UnsafePointer<ProtobufCMessageDescriptor>) -> Bool {
        let key = UInt(bitPattern: descriptor)
        if let known = reachesCString.withLock({ $0[key] }) { return known }
        var visiting: Set<UInt> = []
        func reaches(_ descriptor: UnsafePointer<ProtobufCMessageDescriptor>) -> Bool {
            guard visiting.insert(UInt(bitPattern: descriptor)).inserted else { return false }
            for index in 0..<Int(descriptor.pointee.n_fields) {
                let field = descriptor.pointee.fields + index
                if field.pointee.type == PROTOBUF_C_TYPE_STRING { return true }
                if field.pointee.type == PROTOBUF_C_TYPE_MESSAGE, let nested = field.pointee.descriptor,
                    reaches(nested.assumingMemoryBound(to: ProtobufCMessageDescriptor.self))
                {
                    return true
                }
            }
            return false
        }
        let answer = reaches(descriptor)
        reachesCString.withLock { $0[key] = answer }
        return answer
    }

    /// The dotted path of the first bad string field, or nil. Malformed wire data answers nil: the
    /// unpack that follows refuses it with its own reason.
    static func badString(_ descriptor: UnsafePointer<ProtobufCMessageDescriptor>, _ bytes: UnsafeRawBufferPointer, depth: Int = 0) -> String? {
        guard depth < maxDepth, needsWalk(descriptor) else { return nil }
        var offset = 0
        let count = bytes.count
        while offset < count {
            guard let key = varint(bytes, &offset) else { return nil }
            switch key & 7 {
            case 0:
                guard varint(bytes, &offset) != nil else { return nil }
            case 1:
                offset += 8
            case 5:
                offset += 4
            case 2:
                guard let length = varint(bytes, &offset), length <= UInt64(count - offset) else { return nil }
                let start = offset
                offset += Int(length)
                let number = key >> 3
                guard number <= UInt64(UInt32.max), let field = protobuf_c_message_descriptor_get_field(descriptor, UInt32(number)) else { continue }
                let value = UnsafeRawBufferPointer(rebasing: bytes[start..<offset])
                switch field.pointee.type {
                case PROTOBUF_C_TYPE_STRING:
                    if !isCleanUTF8(value) { return String(cString: field.pointee.name) }
                case PROTOBUF_C_TYPE_MESSAGE:
                    guard let nested = field.pointee.descriptor?.assumingMemoryBound(to: ProtobufCMessageDescriptor.self) else { continue }
                    if let bad = badString(nested, value, depth: depth + 1) { return String(cString: field.pointee.name) + "." + bad }
                default:
                    break
                }
            default:
                return nil
            }
        }
        return nil
    }

    static func varint(_ bytes: UnsafeRawBufferPointer, _ offset: inout Int) -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while offset < bytes.count, shift < 64 {
            let byte = bytes[offset]
            offset += 1
            value |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
        return nil
    }

    /// Valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF) without NUL.
    static func isCleanUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var index = 0
        let count = bytes.count
        while index < count {
            let lead = bytes[index]
            if lead < 0x80 {
                if lead == 0 { return false }
                index += 1
                continue
            }
            let length: Int
            let minimum: UInt32
            var scalar: UInt32
            switch lead {
            case 0xc2...0xdf: (length, minimum, scalar) = (2, 0x80, UInt32(lead & 0x1f))
            case 0xe0...0xef: (length, minimum, scalar) = (3, 0x800, UInt32(lead & 0x0f))
            case 0xf0...0xf4: (length, minimum, scalar) = (4, 0x10000, UInt32(lead & 0x07))
            default: return false
            }
            guard index + length <= count else { return false }
            for next in 1..<length {
                let byte = bytes[index + next]
                guard byte & 0xc0 == 0x80 else { return false }
                scalar = scalar << 6 | UInt32(byte & 0x3f)
            }
            guard scalar >= minimum, scalar <= 0x10ffff, !(0xd800...0xdfff).contains(scalar) else { return false }
            index += length
        }
        return true
    }
}
