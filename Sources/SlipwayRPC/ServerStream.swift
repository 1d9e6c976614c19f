import NIOCore

/// One call on a server connection: request parsing state, the handler's task, response progress.
/// Confined to the connection's event loop.
final class ServerStream {
    enum Phase {
        /// Receiving request headers.
        case headers
        /// Request accepted, handler not started (single-request methods wait for END_STREAM).
        case awaitingRequest
        /// Handler running.
        case running
        /// Status submitted (or the call was refused): nothing more to do but wait for close.
        case done
    }

    let id: Int32
    var phase = Phase.headers
    var path = ""
    var method = ""
    var contentType = ""
    var metadata = Metadata()
    var timeoutNanos: Int64?
    var headerBytes = 0
    /// A problem found while reading headers, reported once they are complete.
    var headerError: (code: RPCStatusCode, message: String, httpStatus: String)?

    /// A plain HTTP request (not gRPC): its headers as sent, its body, the handler it goes to.
    var plain = false
    var rawHeaders: [(name: String, value: String)] = []
    var plainBody: [UInt8] = []
    var plainBodyTooLarge = false

    var handler: MethodHandler?
    var reader: LengthPrefixedMessageReader
    /// The single request of a unary or server-streaming call.
    var request: ByteBuffer?
    var requestCount = 0
    var inbound: InboundMessages?
    var outbound: OutboundMessages?
    var context: ServerContext?
    var task: Task<Void, Never>?
    var deadlineTimer: Scheduled<Void>?

    /// Response HEADERS submitted.
    var headersSent = false
    /// nghttp2's data source for this stream returned DEFERRED: resume it when data arrives.
    var dataDeferred = false
    /// Window held back from the peer while the reader is behind.
    var windowOwed = 0
    var holdingWindow = false

    init(id: Int32, maxMessageSize: Int, allocator: ByteBufferAllocator) {
        self.id = id
        self.reader = LengthPrefixedMessageReader(maxMessageSize: maxMessageSize, allocator: allocator)
    }

    /// Stops everything the call is doing: the handler, readers and writers.
    func cancel(_ error: RPCError) {
        task?.cancel()
        inbound?.finish(error)
        outbound?.fail(error)
        deadlineTimer?.cancel()
        deadlineTimer = nil
    }
}
