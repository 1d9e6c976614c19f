import NIOCore

/// One call on a client connection, confined to the connection's event loop.
final class ClientStream {
    var id: Int32 = 0
    let outbound: OutboundMessages
    let inbound: InboundMessages
    let response: ClientResponseState
    var reader: LengthPrefixedMessageReader
    var dataDeferred = false
    var holdingWindow = false
    var windowOwed = 0
    var deadlineTimer: Scheduled<Void>?
    /// Headers received so far: the response headers first, then trailers.
    var headerBlocks = 0
    var status: String?
    var httpStatus: String?
    var contentType: String?
    var grpcStatus: String?
    var grpcMessage: String?
    var metadata = Metadata()
    var finished = false

    init(outbound: OutboundMessages, inbound: InboundMessages, response: ClientResponseState, maxMessageSize: Int, allocator: ByteBufferAllocator) {
        self.outbound = outbound
        self.inbound = inbound
        self.response = response
        self.reader = LengthPrefixedMessageReader(maxMessageSize: maxMessageSize, allocator: allocator)
    }

    /// Ends the call with `result` (nil error for OK): the response stream ends, writers stop.
    func finish(_ error: RPCError?, trailers: Metadata) {
        guard !finished else { return }
        finished = true
        deadlineTimer?.cancel()
        response.setTrailers(trailers)
        inbound.finish(error)
        outbound.fail(error ?? RPCError(.cancelled, "the call has ended"))
    }
}
