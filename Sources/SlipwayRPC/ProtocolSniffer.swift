import NIOCore

/// Sets up a connection's pipeline for HTTP/1.1 requests (webhooks, Server-Sent Events) on a
/// server that also speaks gRPC; called on the channel's event loop, adds handlers synchronously.
/// Returns what serves the connection: the server runs it in a task it owns (and waits for), so no
/// HTTP/1.1 connection outlives the server.
public typealias HTTP1Initializer = @Sendable (any Channel) throws -> @Sendable () async -> Void

/// Tells HTTP/2 from HTTP/1.1 by the first bytes a client sends (after TLS, if any): the HTTP/2
/// connection preface starts with `PRI * HTTP/2.0`; anything else is taken as an HTTP/1.1 request.
/// Then puts the right handlers after itself, passes on what it read, and leaves the pipeline.
final class ProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private static let preface = Array("PRI * HTTP/2.0".utf8)
    private let http2: (any Channel) throws -> Void
    private let http1: HTTP1Initializer
    private var buffered: ByteBuffer?
    private var deadline: Scheduled<Void>?
    /// How long a new connection may take to say which protocol it speaks.
    static let timeout = TimeAmount.seconds(30)

    /// Runs an HTTP/1.1 connection's serving in a task the server owns.
    private let spawn: @Sendable (@escaping @Sendable () async -> Void) -> Void

    init(
        http2: @escaping (any Channel) throws -> Void, http1: @escaping HTTP1Initializer,
        spawn: @escaping @Sendable (@escaping @Sendable () async -> Void) -> Void
    ) {
        self.spawn = spawn
        self.http2 = http2
        self.http1 = http1
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: Self.timeout) { loopBound.value.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var buffered {
            buffered.writeBuffer(&incoming)
            self.buffered = buffered
        } else {
            buffered = incoming
        }
        guard let bytes = buffered, let isHTTP2 = Self.classify(bytes) else { return }
        do {
            if isHTTP2 {
                try http2(context.channel)
            } else {
                try context.pipeline.syncOperations.addHandler(CloseOnGracefulShutdown())
                spawn(try http1(context.channel))
            }
        } catch {
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        self.buffered = nil
        context.fireChannelRead(wrapInboundOut(bytes))
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // A connection that has not said anything yet has nothing to finish.
        if event is GracefulShutdownEvent { context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }

    /// True for HTTP/2, false for HTTP/1.1, nil while too few bytes have arrived to tell.
    static func classify(_ bytes: ByteBuffer) -> Bool? {
        let count = min(bytes.readableBytes, preface.count)
        guard let prefix = bytes.getBytes(at: bytes.readerIndex, length: count) else { return nil }
        if prefix != Array(preface.prefix(count)) { return false }
        return count == preface.count ? true : nil
    }
}

/// HTTP/1.1 connections end when the server shuts down (event streams would otherwise keep it up).
final class CloseOnGracefulShutdown: ChannelInboundHandler {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is GracefulShutdownEvent { context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }
}
