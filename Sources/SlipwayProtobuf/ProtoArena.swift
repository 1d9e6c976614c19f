#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CProtobufC

/// Owns every C allocation made while building a protobuf-c message, and frees them all on deinit.
public final class ProtoArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    public init() {}

    deinit {
        for pointer in allocations { free(pointer) }
    }

    /// Zero-filled memory for `byteCount` bytes (at least one), alive as long as the arena.
    public func allocate(byteCount: Int) -> UnsafeMutableRawPointer {
        guard let pointer = calloc(1, max(byteCount, 1)) else { fatalError("ProtoArena: out of memory") }
        allocations.append(pointer)
        return pointer
    }

    /// A NUL-terminated copy of `string` (the empty string maps to protobuf-c's shared empty string).
    public func cString(_ string: String) -> UnsafeMutablePointer<CChar> {
        var string = string
        return string.withUTF8 { utf8 in
            let pointer = allocate(byteCount: utf8.count + 1).bindMemory(to: CChar.self, capacity: utf8.count + 1)
            if let base = utf8.baseAddress { memcpy(pointer, base, utf8.count) }
            pointer[utf8.count] = 0
            return pointer
        }
    }

    /// A copy of `bytes` as protobuf-c binary data.
    public func binary(_ bytes: [UInt8]) -> ProtobufCBinaryData {
        if bytes.isEmpty { return ProtobufCBinaryData(len: 0, data: nil) }
        let pointer = allocate(byteCount: bytes.count)
        bytes.withUnsafeBytes { source in _ = memcpy(pointer, source.baseAddress!, bytes.count) }
        return ProtobufCBinaryData(len: bytes.count, data: pointer.assumingMemoryBound(to: UInt8.self))
    }

    /// A fresh C message of the given type, initialised to its defaults, ready to be filled.
    public func message(_ descriptor: UnsafePointer<ProtobufCMessageDescriptor>) -> ProtoCWriter {
        let memory = allocate(byteCount: Int(descriptor.pointee.sizeof_message))
        protobuf_c_message_init(descriptor, memory)
        return ProtoCWriter(arena: self, descriptor: descriptor, pointer: memory)
    }
}
