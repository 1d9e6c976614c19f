import Logging
import NIOCore

/// Carries client calls over one HTTP/2 connection (multiplexed streams), on the channel's event loop.
final class ClientConnectionHandler: HTTP2ConnectionHandler, HTTP2SessionDelegate {
    private let authority: String
    private let scheme: String
    private var streams: [Int32: ClientStream] = [:]
    /// GOAWAY received or the connection closed: new calls need another connection.
    private(set) var isAcceptingCalls = true
    /// Why the connection ended (a refused TLS handshake, a reset), for calls that come later.
    private var endReason: RPCError?
    /// Told when the connection stops accepting calls.
    var onStopAccepting: (() -> Void)?

    init(authority: String, scheme: String, limits: RPCLimits, timings: ConnectionTimings) {
        self.authority = authority
        self.scheme = scheme
        super.init(role: .client, limits: limits, timings: timings)
        session.delegate = self
    }

    // MARK: Connection events


    override func connectionDidEnd(_ error: RPCError) {
        if endReason == nil { endReason = error }
        stopAccepting()
        let open = streams
        streams.removeAll()
        let reason = RPCError(error.code == .internal ? .internal : .unavailable, "connection to \(authority): \(error.message)")
        for stream in open.values { stream.finish(reason, trailers: [:]) }
    }

    override func idleTimeoutExpired() {
        stopAccepting()
    }

    private func stopAccepting() {
        guard isAcceptingCalls else { return }
        isAcceptingCalls = false
        onStopAccepting?()
        onStopAccepting = nil
    }

    // MARK: Calls

    /// Opens a stream for a call. Fails the call when the connection cannot take it.
    func startCall(path: String, options: CallOptions, stream: ClientStream, idBox: StreamIDBox) {
        guard isAcceptingCalls, context != nil else {
            let why = endReason.map { "the connection to \(authority) ended (\($0.message)); retry the call" }
            stream.finish(RPCError(.unavailable, why ?? "the connection to \(authority) is closing; retry the call"), trailers: [:])
            return
        }
        var headers = [
            (":method", "POST"), (":scheme", scheme), (":path", path), (":authority", authority),
            ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "slipway-rpc/1.0"),
        ]
        if let timeout = options.timeout {
            headers.append(("grpc-timeout", GRPCTimeout.format(nanoseconds: timeout.nanoseconds)))
        }
        headers += options.metadata.wireHeaders()
        let id: Int32
        do {
            id = try session.submitRequest(headers: headers)
        } catch {
            stream.finish(RPCError(.unavailable, "cannot open a stream to \(authority) (\(error)); retry the call"), trailers: [:])
            return
        }
        stream.id = id
        idBox.set(id)
        streams[id] = stream
        streamOpened()
        if let timeout = options.timeout, let context {
            stream.deadlineTimer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout.timeAmount) { [weak self, weak stream] in
                guard let self, let stream, !stream.finished else { return }
                self.reset(stream.id)
                stream.finish(RPCError(.deadlineExceeded, "deadline of \(timeout) exceeded calling \(path)"), trailers: [:])
                self.scheduleFlush()
            }
        }
        outboundReady(id)
    }

    /// Cancels a call: RST_STREAM(CANCEL) to the server.
    func cancel(_ streamID: Int32, _ error: RPCError) {
        guard let stream = streams[streamID], !stream.finished else { return }
        reset(streamID)
        stream.finish(error, trailers: [:])
        scheduleFlush()
    }

    func outboundReady(_ streamID: Int32) {
        guard let stream = streams[streamID] else { return }
        _ = stream.outbound.clearNotified()
        if stream.dataDeferred {
            stream.dataDeferred = false
            // False: nghttp2 has closed the stream meanwhile, nothing is waiting to be resumed.
            guard session.resumeData(streamID: streamID) else { return }
        }
        scheduleFlush()
    }

    func releaseWindow(_ streamID: Int32) {
        guard let stream = streams[streamID] else { return }
        stream.inbound.windowReleased()
        stream.holdingWindow = false
        consume(streamID, stream.windowOwed)
        stream.windowOwed = 0
        scheduleFlush()
    }

    // MARK: HTTP2SessionDelegate

    func session(_ session: HTTP2Session, header name: String, value: String, streamID: Int32) {
        guard let stream = streams[streamID] else { return }
        switch name {
        case ":status": stream.httpStatus = value
        case "content-type": stream.contentType = value
        case "grpc-status": stream.grpcStatus = value
        case "grpc-message": stream.grpcMessage = StatusMessageCoding.decode(value)
        default:
            if !Metadata.isReserved(name) { try? stream.metadata.addWire(name: name, value: value) }
        }
    }

    func session(_ session: HTTP2Session, didReceiveHeadersOn streamID: Int32, endStream: Bool) {
        guard let stream = streams[streamID], !stream.finished else { return }
        stream.headerBlocks += 1
        if stream.headerBlocks == 1 {
            if let error = responseHeadersError(stream) {
                reset(streamID)
                stream.finish(error, trailers: [:])
                return
            }
            if !endStream {
                stream.response.setInitial(stream.metadata)
                stream.metadata = Metadata()
                return
            }
        }
        if endStream { complete(stream) }
    }

    /// The gRPC status for response headers that are not a gRPC response.
    private func responseHeadersError(_ stream: ClientStream) -> RPCError? {
        if stream.grpcStatus != nil && stream.httpStatus == "200" { return nil }  // trailers-only
        guard let status = stream.httpStatus, status == "200" else {
            let http = stream.httpStatus ?? "none"
            let code: RPCStatusCode = switch http {
            case "400": .internal
            case "401": .unauthenticated
            case "403": .permissionDenied
            case "404": .unimplemented
            case "429", "502", "503", "504": .unavailable
            default: .unknown
            }
            return RPCError(code, "the server answered HTTP status \(http) for a gRPC call")
        }
        guard let type = stream.contentType, type.hasPrefix("application/grpc") else {
            return RPCError(.unknown, "the server answered content-type \"\(stream.contentType ?? "none")\", not application/grpc")
        }
        return nil
    }

    /// Trailers arrived: end the call with their status.
    private func complete(_ stream: ClientStream) {
        if stream.reader.pendingBytes > 0 {
            stream.finish(RPCError(.internal, "the response ended inside a message"), trailers: stream.metadata)
            return
        }
        guard let statusText = stream.grpcStatus, let raw = Int(statusText) else {
            stream.finish(RPCError(.internal, "the server ended the call without a grpc-status"), trailers: stream.metadata)
            return
        }
        let code = RPCStatusCode(rawValue: raw) ?? .unknown
        if code == .ok {
            stream.finish(nil, trailers: stream.metadata)
        } else {
            stream.finish(RPCError(code, stream.grpcMessage ?? "", metadata: stream.metadata), trailers: stream.metadata)
        }
    }

    func session(_ session: HTTP2Session, didReceiveData bytes: UnsafeRawBufferPointer, streamID: Int32) {
        guard let stream = streams[streamID], !stream.finished else {
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
                if !stream.inbound.push(message) { stream.holdingWindow = true }
            }
        } catch {
            reset(streamID)
            stream.finish(error, trailers: [:])
        }
    }

    func session(_ session: HTTP2Session, didReceiveEndOfDataOn streamID: Int32) {
        guard let stream = streams[streamID], !stream.finished else { return }
        stream.finish(RPCError(.internal, "the server ended the stream without trailers"), trailers: [:])
    }

    func session(_ session: HTTP2Session, didCloseStream streamID: Int32, errorCode: UInt32) {
        guard let stream = streams.removeValue(forKey: streamID) else { return }
        defer { streamClosed() }
        if !stream.finished {
            let error: RPCError = switch errorCode {
            case HTTP2ErrorCode.refusedStream: RPCError(.unavailable, "the server refused the stream; retry the call")
            case HTTP2ErrorCode.cancel: RPCError(.cancelled, "the server cancelled the call")
            case HTTP2ErrorCode.enhanceYourCalm: RPCError(.resourceExhausted, "the server asked to slow down (ENHANCE_YOUR_CALM)")
            case HTTP2ErrorCode.noError: RPCError(.internal, "the server closed the stream without a status")
            default: RPCError(.internal, "the server reset the stream with HTTP/2 error \(errorCode)")
            }
            stream.finish(error, trailers: [:])
        }
    }

    func session(_ session: HTTP2Session, readDataFor streamID: Int32, into buffer: UnsafeMutableRawBufferPointer, flags: inout UInt32) -> Int {
        guard let stream = streams[streamID] else {
            flags |= HTTP2Data.eof
            return 0
        }
        let (count, end) = stream.outbound.read(into: buffer)
        if end != nil {
            flags |= HTTP2Data.eof
            return count
        }
        if count == 0 {
            stream.dataDeferred = true
            return HTTP2Data.deferred
        }
        return count
    }

    func session(_ session: HTTP2Session, didReceiveGoAway lastStreamID: Int32, errorCode: UInt32) {
        stopAccepting()
        goAwayReceived()
    }

    func sessionDidReceivePingAck(_ session: HTTP2Session, opaque: UInt64) {
        pingAcknowledged(opaque: opaque)
    }

    /// RST_STREAM(CANCEL); a session that cannot send it is failed.
    private func reset(_ streamID: Int32) {
        do { try session.resetStream(streamID, errorCode: HTTP2ErrorCode.cancel) } catch { sessionFailed(error) }
    }

    /// Returns flow-control window to the server; a session that cannot is failed.
    private func consume(_ streamID: Int32, _ bytes: Int) {
        do { try session.consume(streamID: streamID, bytes: bytes) } catch { sessionFailed(error) }
    }
}
