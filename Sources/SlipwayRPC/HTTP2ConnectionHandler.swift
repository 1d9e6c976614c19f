import NIOCore

/// The NIO side of one HTTP/2 connection, shared by servers and clients: feeds received bytes to
/// nghttp2, writes what it produces (once per batch, while the channel is writable), and carries out
/// what ``ConnectionStateMachine`` decides about keepalive, idle timeout and graceful shutdown (one
/// timer per purpose). Subclasses handle the streams. Confined to the channel's event loop.
class HTTP2ConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let session: HTTP2Session
    let timings: ConnectionTimings
    private(set) var context: ChannelHandlerContext?
    /// Last time bytes arrived (the keepalive timer checks it when it fires).
    private var lastActivity = NIODeadline.now()
    /// Last time a call ended, or the connection started (the idle timer checks it when it fires).
    private var lastStreamEnd = NIODeadline.now()
    private var inRead = false
    private var inSend = false
    private var flushScheduled = false
    private var started = false
    private var output = ByteBufferAllocator().buffer(capacity: 0)
    private(set) var lifecycle: ConnectionStateMachine
    private var timers: [ConnectionStateMachine.Timer: Scheduled<Void>] = [:]

    init(role: HTTP2Session.Role, limits: RPCLimits, timings: ConnectionTimings) {
        self.session = HTTP2Session(role: role, limits: limits)
        self.timings = timings
        self.lifecycle = ConnectionStateMachine(role: role == .server ? .server : .client, timings: timings)
    }

    // MARK: Hooks for subclasses

    /// The channel became usable.
    func connectionDidStart(context: ChannelHandlerContext) {}
    /// The connection is gone or unusable: fail whatever is open.
    func connectionDidEnd(_ error: RPCError) {}
    /// The connection is about to close on purpose (keepalive unanswered, shutdown grace over):
    /// end open calls with `error`, telling the peer where it still can be told.
    func failOpenStreams(_ error: RPCError) { connectionDidEnd(error) }
    /// No call for the idle timeout; GOAWAY and close follow.
    func idleTimeoutExpired() {}

    /// Subclasses report each stream they start serving and each that closes (idle timeout and
    /// draining count them).
    func streamOpened() { perform(lifecycle.streamOpened()) }
    func streamClosed() {
        if let context { lastStreamEnd = context.eventLoop.now }
        perform(lifecycle.streamClosed())
    }
    /// Begins a graceful shutdown (server: shutdown notice, PING, final GOAWAY; client: GOAWAY).
    func shutdownGracefully() { perform(lifecycle.shutdownRequested()) }
    /// The peer sent GOAWAY.
    func goAwayReceived() { perform(lifecycle.goAwayReceived()) }
    /// A PING acknowledgement arrived with `opaque` data.
    func pingAcknowledged(opaque: UInt64) { perform(lifecycle.pingAcknowledged(ConnectionStateMachine.Ping(rawValue: opaque))) }

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
        guard !started else { return }
        started = true
        lastActivity = context.eventLoop.now
        lastStreamEnd = context.eventLoop.now
        connectionDidStart(context: context)
        flush()
        perform(lifecycle.started())
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
        lastActivity = context.eventLoop.now
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
        // Open calls learn why first: ending the lifecycle can close the channel, and the
        // channelInactive that follows would tell them only "closed".
        connectionDidEnd(error)
        perform(lifecycle.ended())
    }

    // MARK: Sending

    /// Serializes everything nghttp2 has ready and writes it, while the channel accepts more.
    /// Never runs inside `mem_recv` (nghttp2 forbids it): reads end with `channelReadComplete`.
    func flush() {
        flushScheduled = false
        guard let context, !inRead, !inSend else { return }
        while context.channel.isWritable {
            inSend = true
            let sent = session.send(into: &output, limit: 256 * 1024)
            inSend = false
            guard sent else {
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
        } else if lifecycle.state == .closed && !session.wantsWrite {
            context.close(promise: nil)
        }
    }

    /// Flushes soon, once for everything that becomes ready before then.
    func scheduleFlush() {
        guard !inRead, !flushScheduled, let context else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute { self.flush() }
    }

    // MARK: Lifecycle actions

    /// Carries out what the lifecycle decided.
    func perform(_ actions: [ConnectionStateMachine.Action]) {
        guard !actions.isEmpty else { return }
        var close = false
        for action in actions {
            switch action {
            case .schedule(let timer, let delay):
                timers[timer]?.cancel()
                guard let context else { continue }
                timers[timer] = context.eventLoop.assumeIsolated().scheduleTask(in: delay.timeAmount) { [weak self] in
                    guard let self else { return }
                    self.timers[timer] = nil
                    let now = self.context?.eventLoop.now ?? .now()
                    let since = timer == .idle ? self.lastStreamEnd : self.lastActivity
                    self.perform(self.lifecycle.timerFired(timer, sinceActivity: Duration(now - since)))
                }
            case .cancel(let timer):
                timers.removeValue(forKey: timer)?.cancel()
            case .sendPing(let ping):
                do { try session.submitPing(opaque: ping.rawValue) } catch { return sessionFailed(error) }
            case .sendShutdownNotice:
                do { try session.submitShutdownNotice() } catch { return sessionFailed(error) }
            case .sendGoAway:
                do { try session.submitGoAway(errorCode: HTTP2ErrorCode.noError) } catch { return sessionFailed(error) }
            case .failOpenStreams(let error):
                failOpenStreams(error)
            case .notifyIdle:
                idleTimeoutExpired()
            case .close:
                close = true
            }
        }
        if inRead || inSend {
            // nghttp2 forbids sending from inside mem_recv or mem_send: finish on the next loop turn.
            context?.eventLoop.assumeIsolated().execute { [weak self] in self?.finishActions(close: close) }
            return
        }
        finishActions(close: close)
    }

    private func finishActions(close: Bool) {
        flush()
        if close { context?.close(promise: nil) }
    }

    /// nghttp2 refused a connection-level call (out of memory, or a state it should never be in):
    /// the connection cannot go on.
    func sessionFailed(_ error: HTTP2SessionError) {
        end(RPCError(.internal, "HTTP/2 session failed: \(error)"))
        context?.close(promise: nil)
    }
}
