import CNGHTTP2
import Logging
import NIOCore
import Synchronization

/// Serves gRPC calls on one HTTP/2 connection: the bridge between NIO's bytes and nghttp2's session.
///
/// Everything here runs on the channel's event loop. Handlers' tasks reach it only through
/// ``OutboundMessages`` / ``InboundMessages`` wake-ups.
final class ServerConnectionHandler: HTTP2ConnectionHandler, HTTP2SessionDelegate {
    private let handlers: [String: MethodHandler]
    private let plainHTTP: PlainHTTPHandler?
    private let plainHTTPMaxBodyBytes: Int
    private let limits: RPCLimits
    private let logger: Logger
    /// Where the handlers' tasks are registered (the server awaits them all).
    private let tasks: HandlerTasks
    private var streams: [Int32: ServerStream] = [:]
    /// Plain HTTP request bodies held on this connection.
    private var plainBuffered = 0
    /// Plain requests answered before their body ended, by the PING sent after their response:
    /// each is reset (NO_ERROR) once the client acknowledges that PING, i.e. once it has read the
    /// response; resetting at once lets some clients (curl 7.88) see the reset before the response.
    private var earlyResponses: [UInt64: [Int32]] = [:]
    private var earlyResponsePings: UInt64 = 0
    private var peer = "unknown"
    /// Who may call what; nil: anyone who reaches the port.
    private let accessPolicy: AccessPolicy?
    /// The client certificate's verdict, when the server authenticates its clients.
    private let authentication: PeerAuthentication?

    init(
        handlers: [String: MethodHandler], plainHTTP: PlainHTTPHandler? = nil, plainHTTPMaxBodyBytes: Int = 0, limits: RPCLimits,
        timings: ConnectionTimings, tasks: HandlerTasks = HandlerTasks(), accessPolicy: AccessPolicy? = nil, peer: PeerAuthentication? = nil,
        logger: Logger
    ) {
        self.tasks = tasks
        self.accessPolicy = accessPolicy
        self.authentication = peer
        self.handlers = handlers
        self.plainHTTP = plainHTTP
        self.plainHTTPMaxBodyBytes = plainHTTPMaxBodyBytes
        self.limits = limits
        self.logger = logger
        super.init(role: .server, limits: limits, timings: timings)
        session.delegate = self
    }

    // MARK: Connection events


    override func connectionDidStart(context: ChannelHandlerContext) {
        peer = context.channel.remoteAddress?.description ?? "unknown"
    }

    override func connectionDidEnd(_ error: RPCError) {
        if error.code == .internal { logger.debug("closing connection", metadata: ["peer": "\(peer)", "error": "\(error.message)"]) }
        let open = streams
        streams.removeAll()
        for stream in open.values { stream.cancel(RPCError(.unavailable, "the connection closed")) }
    }

    override func failOpenStreams(_ error: RPCError) {
        for stream in streams.values { fail(stream, error) }
    }

    override func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is GracefulShutdownEvent {
            shutdownGracefully()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// A writer queued data or finished: start or resume the response.
    func outboundReady(_ streamID: Int32) {
        guard let stream = streams[streamID], let outbound = stream.outbound else { return }
        let (hasData, end, initialMetadata) = outbound.clearNotified()
        var statusOnly = false
        if case .status? = end { statusOnly = true }
        switch stream.machine.responseReady(hasData: hasData, ended: end != nil, statusOnly: statusOnly, aborted: stream.machine.isPlain && outbound.isAborted) {
        case .none:
            if stream.machine.isPlain && !stream.machine.headersSent { return }
        case .trailersOnly:
            guard case .status(let code, let message, let metadata)? = end else { return }
            var headers = [(":status", "200"), ("content-type", "application/grpc")]
            headers += statusHeaders(code: code, message: message, metadata: metadata)
            respond(stream, headers, hasBody: false)
        case .grpcHeaders:
            var headers = [(":status", "200"), ("content-type", "application/grpc")]
            headers += initialMetadata.wireHeaders()
            respond(stream, headers, hasBody: true)
        case .plainHead(let hasBody):
            let head = outbound.plainHead ?? (200, [])
            respond(stream, [(":status", String(head.status))] + head.headers, hasBody: hasBody)
        case .reset:
            reset(stream, HTTP2ErrorCode.internalError)
        case .refusePlain(let status):
            refusePlain(stream, status: status)
        case .resume:
            // False: nghttp2 has closed the stream meanwhile, nothing is waiting to be resumed.
            guard session.resumeData(streamID: streamID) else { return }
        }
        scheduleFlush()
    }

    private func statusHeaders(code: RPCStatusCode, message: String, metadata: Metadata) -> [(String, String)] {
        var headers = [("grpc-status", String(code.rawValue))]
        if !message.isEmpty { headers.append(("grpc-message", StatusMessageCoding.encode(message))) }
        headers += metadata.wireHeaders()
        return headers
    }

    /// Submits the response headers; when nghttp2 refuses them, the call cannot be answered and
    /// is reset instead.
    private func respond(_ stream: ServerStream, _ headers: [(String, String)], hasBody: Bool) {
        do {
            try session.submitResponse(streamID: stream.id, headers: headers, hasBody: hasBody)
        } catch {
            logger.debug("cannot send response headers; resetting the stream", metadata: ["peer": "\(peer)", "stream": "\(stream.id)", "error": "\(error)"])
            abandon(stream)
        }
    }

    /// Resets a stream; a session that cannot even do that is failed.
    private func reset(_ stream: ServerStream, _ code: UInt32) {
        do { try session.resetStream(stream.id, errorCode: code) } catch { sessionFailed(error) }
    }

    /// Returns flow-control window to the peer; a session that cannot is failed.
    private func consume(_ streamID: Int32, _ bytes: Int) {
        do { try session.consume(streamID: streamID, bytes: bytes) } catch { sessionFailed(error) }
    }

    /// A call nghttp2 will not let us answer: reset it and stop its handler.
    private func abandon(_ stream: ServerStream) {
        stream.machine.refused()
        reset(stream, HTTP2ErrorCode.internalError)
        stream.cancel(RPCError(.internal, "the response could not be sent"))
    }

    /// Refuses a call before any handler ran, with a trailers-only response.
    private func refuse(_ stream: ServerStream, code: RPCStatusCode, message: String, httpStatus: String = "200") {
        var headers = [(":status", httpStatus), ("content-type", "application/grpc")]
        headers += statusHeaders(code: code, message: message, metadata: [:])
        stream.machine.refused()
        respond(stream, headers, hasBody: false)
        stream.cancel(RPCError(code, message))
    }

    /// Ends a call with `error` (deadline, protocol violation, shutdown): its handler is cancelled.
    private func fail(_ stream: ServerStream, _ error: RPCError) {
        switch stream.machine.failed() {
        case .none:
            return
        case .reset:
            // Never a gRPC status on a plain response: a reset after its head.
            reset(stream, HTTP2ErrorCode.internalError)
            stream.cancel(error)
        case .refusePlain:
            refusePlain(stream, status: 503)
            stream.cancel(error)
        case .status:
            stream.outbound?.finish(.status(code: error.code, message: error.message, metadata: error.metadata))
            stream.task?.cancel()
            stream.inbound?.finish(error)
        case .refuse:
            refuse(stream, code: error.code, message: error.message)
        }
    }

    // MARK: HTTP2SessionDelegate

    func session(_ session: HTTP2Session, header name: String, value: String, streamID: Int32) {
        let stream: ServerStream
        if let existing = streams[streamID] {
            stream = existing
        } else {
            stream = ServerStream(id: streamID, maxMessageSize: limits.maxMessageSize, allocator: context!.channel.allocator)
            streams[streamID] = stream
            streamOpened()
        }
        guard stream.machine.request == .headers else { return }  // trailers from a client carry nothing we use
        stream.headerBytes += name.utf8.count + value.utf8.count + 32
        if stream.headerBytes > limits.maxHeaderListSize {
            if stream.headerError == nil {
                stream.headerError = (.resourceExhausted, "request headers exceed the limit of \(limits.maxHeaderListSize) bytes", "200")
            }
            return
        }
        if plainHTTP != nil, !name.hasPrefix(":") { stream.rawHeaders.append((name, value)) }
        switch name {
        case ":path": stream.path = value
        case ":method": stream.method = value
        case "content-type": stream.contentType = value
        case "grpc-timeout":
            if let nanos = GRPCTimeout.parse(value) {
                stream.timeoutNanos = nanos
            } else if stream.headerError == nil {
                stream.headerError = (.invalidArgument, "malformed grpc-timeout header \"\(value)\"", "200")
            }
        case "grpc-encoding":
            if value != "identity", stream.headerError == nil {
                stream.headerError = (.unimplemented, "grpc-encoding \"\(value)\" is not supported; send uncompressed messages", "200")
            }
        default:
            if !Metadata.isReserved(name) {
                do {
                    try stream.metadata.addWire(name: name, value: value)
                } catch {
                    if stream.headerError == nil { stream.headerError = (error.code, error.message, "200") }
                }
            }
        }
    }

    func session(_ session: HTTP2Session, didReceiveHeadersOn streamID: Int32, endStream: Bool) {
        guard let stream = streams[streamID] else { return }
        if stream.machine.request == .headers {
            accept(stream)
        }
        if endStream { endOfInput(stream) }
    }

    /// Request headers are complete: route the call and prepare its state.
    private func accept(_ stream: ServerStream) {
        if !lifecycle.acceptsStreams {
            stream.machine.refused()
            reset(stream, HTTP2ErrorCode.refusedStream)
            return
        }
        if plainHTTP != nil, stream.method != "POST" || !stream.contentType.hasPrefix("application/grpc") {
            return acceptPlain(stream)
        }
        guard stream.method == "POST" else {
            return refuse(stream, code: .unimplemented, message: "gRPC requires POST, got \(stream.method)", httpStatus: "405")
        }
        guard stream.contentType.hasPrefix("application/grpc") else {
            return refuse(stream, code: .unknown, message: "content-type must be application/grpc, got \"\(stream.contentType)\"", httpStatus: "415")
        }
        if let error = stream.headerError {
            return refuse(stream, code: error.code, message: error.message, httpStatus: error.httpStatus)
        }
        guard let handler = handlers[stream.path] else {
            return refuse(stream, code: .unimplemented, message: "unknown method \(stream.path)")
        }
        let caller = authentication?.currentIdentity()
        if let authentication, caller == nil {
            // Its certificate expired or was revoked since the handshake.
            let reason = authentication.refusal ?? "no verified client certificate"
            logger.warning("refused a call", metadata: ["peer": "\(peer)", "method": "\(stream.path)", "cause": "\(reason)"])
            refuse(stream, code: .unauthenticated, message: "the connection's client certificate no longer holds: \(reason)")
            // The connection holds no power any more: GOAWAY, so that a client whose certificate was
            // renewed meanwhile connects again with the new one instead of failing here forever.
            shutdownGracefully()
            return
        }
        if let accessPolicy, let denial = accessPolicy.decide(caller: caller, path: stream.path) {
            logger.notice("denied a call", metadata: ["peer": "\(peer)", "caller": "\(caller ?? "none")", "method": "\(stream.path)"])
            return refuse(stream, code: denial.code, message: denial.message)
        }
        let context = self.context!
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let id = stream.id
        let eventLoop = context.eventLoop
        let outbound = makeOutbound(id)
        var deadline: ContinuousClock.Instant?
        if let nanos = stream.timeoutNanos {
            deadline = ContinuousClock.now.advanced(by: .nanoseconds(nanos))
            stream.deadlineTimer = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(nanos)) { [weak self, weak stream] in
                guard let self, let stream else { return }
                self.fail(stream, RPCError(.deadlineExceeded, "deadline of \(Double(nanos) / 1e9)s exceeded"))
            }
        }
        stream.handler = handler
        stream.outbound = outbound
        stream.context = ServerContext(
            path: stream.path, metadata: stream.metadata, deadline: deadline, peer: peer, caller: caller,
            callerCertificate: authentication?.certificate, outbound: outbound)
        if !handler.takesSingleRequest {
            stream.inbound = InboundMessages(windowHoldback: limits.initialStreamWindow) {
                eventLoop.execute { loopBound.value.releaseWindow(id) }
            }
        }
        if stream.machine.acceptedCall(singleRequest: handler.takesSingleRequest) { startHandler(stream) }
    }

    /// A response queue whose writers wake this connection to send.
    private func makeOutbound(_ id: Int32) -> OutboundMessages {
        let context = self.context!
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        return OutboundMessages(
            allocator: context.channel.allocator, highWatermark: limits.outboundHighWatermark, maxMessageSize: limits.maxMessageSize
        ) {
            if eventLoop.inEventLoop {
                loopBound.value.outboundReady(id)
            } else {
                eventLoop.execute { loopBound.value.outboundReady(id) }
            }
        }
    }

    // MARK: Plain HTTP requests

    /// A request that is not gRPC, for the plain HTTP handler: its body is collected, then the
    /// handler runs with a writer for a plain response.
    private func acceptPlain(_ stream: ServerStream) {
        if let error = stream.headerError, error.code == .resourceExhausted {
            stream.machine.refused()
            respond(stream, [(":status", "431")], hasBody: false)
            return
        }
        let eventLoop = context!.eventLoop
        stream.machine.acceptedPlain()
        stream.outbound = makeOutbound(stream.id)
        if let length = stream.rawHeaders.first(where: { $0.name == "content-length" }).flatMap({ Int($0.value) }), length > plainHTTPMaxBodyBytes {
            return refusePlain(stream, status: 413)
        }
        // The body must arrive within this time (a stream that never ends would hold its buffer).
        stream.deadlineTimer = eventLoop.assumeIsolated().scheduleTask(in: Self.plainBodyTimeout) { [weak self, weak stream] in
            guard let self, let stream, stream.machine.awaitsPlainBody else { return }
            self.refusePlain(stream, status: 408)
        }
    }

    /// How long a plain request's body may take to arrive.
    static let plainBodyTimeout = TimeAmount.seconds(30)

    /// Answers a plain request with a bodiless status and stops its upload (RST_STREAM NO_ERROR).
    private func refusePlain(_ stream: ServerStream, status: Int) {
        plainBuffered -= stream.plainBody.count
        stream.plainBody = []
        let sendStatus = !stream.machine.headersSent
        stream.machine.refused()
        if sendStatus {
            respond(stream, [(":status", String(status))], hasBody: false)
        }
        stream.deadlineTimer?.cancel()
        // Reset (NO_ERROR, RFC 9113 §8.1) once the client has seen the response: after the
        // acknowledgement of a PING sent behind it, or at the keepalive timeout. Meanwhile what it
        // still sends is counted against the window and dropped.
        earlyResponsePings += 1
        let opaque = Self.earlyResponsePing | earlyResponsePings
        earlyResponses[opaque, default: []].append(stream.id)
        scheduleFlush()
        // The PING after the response has been written (nghttp2 sends PINGs ahead of HEADERS).
        let loop = context?.eventLoop.assumeIsolated()
        loop?.execute { [weak self] in
            self?.sendPing(opaque)
        }
        loop?.scheduleTask(in: timings.keepaliveTimeout.timeAmount) { [weak self] in
            self?.resetEarlyResponses(opaque)
        }
    }

    private func sendPing(_ opaque: UInt64) {
        do { try session.submitPing(opaque: opaque) } catch { return sessionFailed(error) }
        flush()
    }

    /// The PING payloads of early responses: a prefix apart from the connection's own PINGs.
    static let earlyResponsePing: UInt64 = 0x534C_5700_0000_0000

    /// Also called inside mem_recv (a PING acknowledgement): the resets go out with the next flush.
    private func resetEarlyResponses(_ opaque: UInt64) {
        guard let ids = earlyResponses.removeValue(forKey: opaque) else { return }
        for id in ids {
            guard let stream = streams[id] else { continue }
            reset(stream, HTTP2ErrorCode.noError)
        }
        scheduleFlush()
    }

    private func startPlain(_ stream: ServerStream) {
        stream.deadlineTimer?.cancel()
        plainBuffered -= stream.plainBody.count
        guard let handler = plainHTTP, let outbound = stream.outbound else { return }
        let request = PlainHTTPRequest(
            method: stream.method, target: stream.path, headers: stream.rawHeaders, body: stream.plainBody,
            remoteAddress: context?.channel.remoteAddress?.ipAddress)
        stream.plainBody = []
        let wrote = Mutex(false)
        let writer = PlainHTTPResponseWriter(
            start: { status, headers in outbound.setPlainHead(status: status, headers: headers) },
            write: { bytes in
                wrote.withLock { $0 = true }
                try await outbound.writeRaw(bytes)
            })
        let logger = self.logger
        stream.task = tasks.spawn {
            do {
                try await handler(request, writer)
                outbound.finish(.endStream)
            } catch {
                logger.debug("plain HTTP handler failed", metadata: ["path": "\(request.target)", "error": "\(error)"])
                if wrote.withLock({ $0 }) {
                    outbound.abort()  // the client must not take a cut body for a whole one
                } else {
                    let text = Array("\(error)\n".utf8)
                    outbound.replacePlainHead(status: 500, headers: [("content-type", "text/plain"), ("content-length", String(text.count))])
                    try? await outbound.writeRaw(text)
                    outbound.finish(.endStream)
                }
            }
        }
    }

    func session(_ session: HTTP2Session, didReceiveData bytes: UnsafeRawBufferPointer, streamID: Int32) {
        if let stream = streams[streamID], stream.machine.isPlain {
            consume(streamID, bytes.count)
            guard stream.machine.awaitsPlainBody else { return }
            if stream.plainBody.count + bytes.count > plainHTTPMaxBodyBytes {
                return refusePlain(stream, status: 413)
            }
            // Bodies buffered on one connection: at most two requests' worth.
            if plainBuffered + bytes.count > 2 * plainHTTPMaxBodyBytes {
                return refusePlain(stream, status: 503)
            }
            plainBuffered += bytes.count
            stream.plainBody.append(contentsOf: bytes)
            return
        }
        guard let stream = streams[streamID], stream.machine.readsData else {
            consume(streamID, bytes.count)
            return
        }
        stream.reader.append(bytes)
        if stream.holdingWindow {
            stream.windowOwed += bytes.count
        } else {
            consume(streamID, bytes.count)
        }
        do {
            while let message = try stream.reader.next() {
                switch stream.machine.messageReceived() {
                case .deliver:
                    if stream.inbound?.push(message) == false { stream.holdingWindow = true }
                case .keepAsRequest:
                    stream.request = message
                case .drop:
                    break
                }
            }
        } catch {
            fail(stream, error)
        }
    }

    func session(_ session: HTTP2Session, didReceiveEndOfDataOn streamID: Int32) {
        guard let stream = streams[streamID] else { return }
        endOfInput(stream)
    }

    /// The client half-closed: start a single-request handler, or end the request stream.
    private func endOfInput(_ stream: ServerStream) {
        switch stream.machine.endOfInput(strayBytes: stream.reader.pendingBytes, path: stream.path) {
        case .none: break
        case .startHandler: startHandler(stream)
        case .startPlain: startPlain(stream)
        case .finishRequests: stream.inbound?.finish(nil)
        case .fail(let error): fail(stream, error)
        }
    }

    private func startHandler(_ stream: ServerStream) {
        guard let handler = stream.handler, let outbound = stream.outbound, let context = stream.context else { return }
        let request = stream.request
        stream.request = nil
        if case .unaryOnEventLoop(let body) = handler {
            do {
                let response = try body(request!, context)
                try outbound.writeNow(response)
                outbound.finish(.status(code: .ok, message: "", metadata: context.trailingMetadata))
            } catch {
                Self.finish(outbound, context, error)
            }
            return
        }
        stream.task = Self.spawn(handler, request: request, inbound: stream.inbound, outbound: outbound, context: context, tasks: tasks)
    }

    /// Runs an async handler in its own task (one per call, never one per message).
    private static func spawn(
        _ handler: MethodHandler, request: ByteBuffer?, inbound: InboundMessages?, outbound: OutboundMessages, context: ServerContext,
        tasks: HandlerTasks
    ) -> Task<Void, Never> {
        tasks.spawn {
            await run(outbound, context) {
                switch handler {
                case .unary(let body):
                    try outbound.writeNow(try await body(request!, context))
                case .unaryOnEventLoop(let body):
                    try outbound.writeNow(try body(request!, context))
                case .serverStreaming(let body):
                    try await body(request!, outbound, context)
                case .clientStreaming(let body):
                    try outbound.writeNow(try await body(inbound!, context))
                case .bidirectional(let body):
                    try await body(inbound!, outbound, context)
                }
            }
        }
    }

    private static func run(_ outbound: OutboundMessages, _ context: ServerContext, _ body: () async throws -> Void) async {
        do {
            try await body()
            outbound.finish(.status(code: .ok, message: "", metadata: context.trailingMetadata))
        } catch {
            finish(outbound, context, error)
        }
    }

    private static func finish(_ outbound: OutboundMessages, _ context: ServerContext, _ error: any Error) {
        let status = RPCError.from(error)
        var metadata = context.trailingMetadata
        for entry in status.metadata.entries {
            switch entry.value {
            case .text(let text): metadata.add(entry.key, text)
            case .binary(let bytes): metadata.add(entry.key, binary: bytes)
            }
        }
        outbound.finish(.status(code: status.code, message: status.message, metadata: metadata))
    }

    func session(_ session: HTTP2Session, didCloseStream streamID: Int32, errorCode: UInt32) {
        guard let stream = streams.removeValue(forKey: streamID) else { return }
        defer { streamClosed() }
        if stream.machine.isPlain {
            plainBuffered -= stream.plainBody.count
            stream.plainBody = []
        }
        if stream.machine.closed(errorCode: errorCode) {
            stream.cancel(RPCError(.cancelled, "the client cancelled the call"))
        } else {
            stream.deadlineTimer?.cancel()
        }
    }

    func session(_ session: HTTP2Session, readDataFor streamID: Int32, into buffer: UnsafeMutableRawBufferPointer, flags: inout UInt32) -> Int {
        guard let stream = streams[streamID], let outbound = stream.outbound else {
            flags |= HTTP2Data.eof
            return 0
        }
        let (count, end) = outbound.read(into: buffer)
        switch stream.machine.dataRequested(count: count, ended: end != nil) {
        case .send:
            return count
        case .deferred:
            return HTTP2Data.deferred
        case .end(trailers: false):
            // A plain response ends with its last DATA frame: no trailers.
            flags |= HTTP2Data.eof
            return count
        case .end(trailers: true):
            flags |= HTTP2Data.eof | HTTP2Data.noEndStream
            var trailers: [(String, String)] = []
            if case .status(let code, let message, let metadata)? = end {
                trailers = statusHeaders(code: code, message: message, metadata: metadata)
            }
            stream.deadlineTimer?.cancel()
            do {
                try session.submitTrailers(streamID: streamID, headers: trailers)
            } catch {
                logger.debug("cannot send trailers; resetting the stream", metadata: ["peer": "\(peer)", "stream": "\(streamID)", "error": "\(error)"])
                reset(stream, HTTP2ErrorCode.internalError)
            }
            return count
        }
    }

    func session(_ session: HTTP2Session, didReceiveGoAway lastStreamID: Int32, errorCode: UInt32) {
        goAwayReceived()
    }

    func sessionDidReceivePingAck(_ session: HTTP2Session, opaque: UInt64) {
        if opaque & 0xFFFF_FF00_0000_0000 == Self.earlyResponsePing { return resetEarlyResponses(opaque) }
        pingAcknowledged(opaque: opaque)
    }

    /// The reader of a request stream caught up: return the held-back window to the client.
    func releaseWindow(_ streamID: Int32) {
        guard let stream = streams[streamID] else { return }
        stream.inbound?.windowReleased()
        stream.holdingWindow = false
        consume(streamID, stream.windowOwed)
        stream.windowOwed = 0
        scheduleFlush()
    }
}

/// Sent through a server connection's pipeline to start its graceful shutdown.
struct GracefulShutdownEvent {}
