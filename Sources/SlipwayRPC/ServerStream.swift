import NIOCore

/// One call on a server connection: its protocol state (``ServerStreamStateMachine``), what its
/// request headers said, and its resources: the handler's task, the message queues both ways, the
/// deadline timer. Confined to the connection's event loop.
final class ServerStream {
    let id: Int32
    /// Where the request and the response are.
    var machine = ServerStreamStateMachine()
    var path = ""
    var method = ""
    var contentType = ""
    var metadata = Metadata()
    var timeoutNanos: Int64?
    var headerBytes = 0
    /// A problem found while reading headers, reported once they are complete.
    var headerError: (code: RPCStatusCode, message: String, httpStatus: String)?

    /// A plain HTTP request (not gRPC): its headers as sent, its body.
    var rawHeaders: [(name: String, value: String)] = []
    var plainBody: [UInt8] = []

    var handler: MethodHandler?
    var reader: LengthPrefixedMessageReader
    /// The single request of a unary or server-streaming call.
    var request: ByteBuffer?
    var inbound: InboundMessages?
    var outbound: OutboundMessages?
    var context: ServerContext?
    var task: Task<Void, Never>?
    var deadlineTimer: Scheduled<Void>?

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
