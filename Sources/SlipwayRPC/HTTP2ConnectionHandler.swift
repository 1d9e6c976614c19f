import NIOCore

/// The NIO side of one HTTP/2 connection, shared by servers and clients: feeds received bytes to
/// nghttp2, writes what it produces (once per batch, while the channel is writable), and runs the
/// keepalive and idle timers. Subclasses handle the streams. Confined to the channel's event loop.
class HTTP2ConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let session: HTTP2Session
    let timings: ConnectionTimings
    private(set) var context: ChannelHandlerContext?
    /// Last time a frame arrived or a stream opened or closed.
    var lastActivity = NIODeadline.now()
    private var inRead = false
    private var flushScheduled = false
    private var output = ByteBufferAllocator().buffer(capacity: 0)
    private var maintenance: Scheduled<Void>?
    private var pingSentAt: NIODeadline?

    init(role: HTTP2Session.Role, limits: RPCLimits, timings: ConnectionTimings) {
        self.session = HTTP2Session(role: role, limits: limits)
        self.timings = timings
    }

    // MARK: Hooks for subclasses

    /// Whether any call is open (idle timeout counts only without one).
    var hasOpenStreams: Bool { false }
    /// Whether the connection should close once its streams are done (after GOAWAY).
    var closesWhenStreamsEnd: Bool { false }
    /// The channel became usable.
    func connectionDidStart(context: ChannelHandlerContext) {}
    /// The connection is gone or unusable: fail whatever is open.
    func connectionDidEnd(_ error: RPCError) {}
    /// No call for the idle timeout: by default GOAWAY and close.
    func idleTimeoutExpired() {
        session.submitGoAway(errorCode: HTTP2ErrorCode.noError)
        flush()
        context?.close(promise: nil)
    }

    // MARK: NIO events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        output = context.channel.allocator.buffer(capacity: 16 * 1024)
        if context.channel.isActive { start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard maintenance == nil else { return }
        connectionDidStart(context: context)
        flush()
        scheduleTick()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        end(RPCError(.unavailable, "the connection closed"))
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        end(RPCError(.unavailable, "the connection closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        end(RPCError(.unavailable, "the connection failed: \(error)"))
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        lastActivity = .now()
        inRead = true
        let failure = buffer.withUnsafeReadableBytes { session.receive($0) }
        inRead = false
        if let failure {
            end(RPCError(.internal, "HTTP/2 protocol error: \(failure)"))
            flush()  // nghttp2 queued a GOAWAY saying why
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flush()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { flush() }
        context.fireChannelWritabilityChanged()
    }

    private func end(_ error: RPCError) {
        maintenance?.cancel()
        maintenance = nil
        connectionDidEnd(error)
    }

    // MARK: Sending

    /// Serializes everything nghttp2 has ready and writes it, while the channel accepts more.
    /// Never runs inside `mem_recv` (nghttp2 forbids it): reads end with `channelReadComplete`.
    func flush() {
        flushScheduled = false
        guard let context, !inRead else { return }
        while context.channel.isWritable {
            guard session.send(into: &output, limit: 256 * 1024) else {
                context.close(promise: nil)
                return
            }
            if output.readableBytes == 0 { break }
            context.write(wrapOutboundOut(output), promise: nil)
            output = context.channel.allocator.buffer(capacity: 16 * 1024)
        }
        context.flush()
        if !session.wantsRead && !session.wantsWrite {
            context.close(promise: nil)
        } else if closesWhenStreamsEnd && !hasOpenStreams && !session.wantsWrite {
            context.close(promise: nil)
        }
    }

    /// Flushes soon, once for everything that becomes ready before then.
    func scheduleFlush() {
        guard !inRead, !flushScheduled, let context else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute { self.flush() }
    }

    // MARK: Keepalive and idle

    /// Runs `tick` once a second while the connection lives.
    private func scheduleTick() {
        guard let context else { return }
        maintenance = context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(1)) { [weak self] in
            guard let self, self.maintenance != nil else { return }
            self.tick()
            if self.maintenance != nil { self.scheduleTick() }
        }
    }

    private func tick() {
        guard let context else { return }
        let now = NIODeadline.now()
        if let sent = pingSentAt, now - sent > timings.keepaliveTimeout.timeAmount {
            end(RPCError(.unavailable, "the peer stopped answering keepalive PINGs"))
            context.close(promise: nil)
            return
        }
        if let idle = timings.idleTimeout, !hasOpenStreams, now - lastActivity > idle.timeAmount {
            idleTimeoutExpired()
            return
        }
        if let interval = timings.keepaliveInterval, pingSentAt == nil, now - lastActivity > interval.timeAmount {
            pingSentAt = now
            session.submitPing()
            flush()
        }
    }

    /// A PING acknowledgement arrived: the peer is alive.
    func pingAcknowledged() {
        pingSentAt = nil
    }
}
