import NIOCore

/// Splits a byte stream into gRPC length-prefixed messages (1 flag byte, 4-byte big-endian length).
struct LengthPrefixedMessageReader {
    private var buffer: ByteBuffer
    private let maxMessageSize: Int

    init(maxMessageSize: Int, allocator: ByteBufferAllocator) {
        self.maxMessageSize = maxMessageSize
        self.buffer = allocator.buffer(capacity: 0)
    }

    /// Bytes received but not yet part of a complete message.
    var pendingBytes: Int { buffer.readableBytes }

    /// Appends received bytes.
    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        buffer.writeBytes(bytes)
    }

    /// The next complete message, nil when more bytes are needed.
    mutating func next() throws(RPCError) -> ByteBuffer? {
        guard buffer.readableBytes >= 5 else { return nil }
        let start = buffer.readerIndex
        let flag = buffer.getInteger(at: start, as: UInt8.self)!
        let length = Int(buffer.getInteger(at: start + 1, as: UInt32.self)!)
        if flag & 0x01 != 0 {
            throw RPCError(.unimplemented, "compressed messages are not supported (no grpc-encoding was negotiated)")
        }
        if flag & ~0x01 != 0 {
            throw RPCError(.internal, "invalid message flag byte \(flag)")
        }
        if length > maxMessageSize {
            throw RPCError(.resourceExhausted, "message of \(length) bytes exceeds the limit of \(maxMessageSize) bytes")
        }
        guard buffer.readableBytes >= 5 + length else { return nil }
        buffer.moveReaderIndex(forwardBy: 5)
        let message = buffer.readSlice(length: length)!
        if buffer.readableBytes == 0 {
            // Reuse the storage instead of growing forever.
            buffer.clear()
        } else if buffer.readerIndex > 64 * 1024 {
            buffer.discardReadBytes()
        }
        return message
    }
}

extension ByteBuffer {
    /// Appends one length-prefixed, uncompressed gRPC message.
    mutating func writeGRPCMessage(_ bytes: some Collection<UInt8>) {
        writeInteger(UInt8(0))
        writeInteger(UInt32(truncatingIfNeeded: bytes.count))
        writeBytes(bytes)
    }
}
