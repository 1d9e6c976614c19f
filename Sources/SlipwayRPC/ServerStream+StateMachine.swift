import NIOCore

/// One server call's protocol state, apart from its resources: where the request is (headers, its
/// one message, a stream of messages, a plain HTTP body) and where the response is (nothing sent,
/// streaming, ended). Pure: the connection handler reports each event and does what comes back,
/// so every path is tested without sockets.
struct ServerStreamStateMachine {
    /// What the request side expects next.
    enum Request: Equatable {
        /// The HEADERS block.
        case headers
        /// The one message of a unary or server-streaming call, then END_STREAM.
        case singleMessage(count: Int)
        /// A plain HTTP request's body.
        case plainBody
        /// Messages for the running handler, until END_STREAM.
        case streaming
        /// Nothing more is read (END_STREAM seen, or the call refused or over).
        case closed
    }

    /// What the response side has sent.
    enum Response: Equatable {
        /// Nothing yet.
        case idle
        /// Headers sent, body under way; `deferred`: nghttp2 waits for data to be resumed.
        case open(deferred: Bool)
        /// The last frame is submitted (trailers, END_STREAM or RST_STREAM): nothing more goes out.
        case ended
    }

    private(set) var request = Request.headers
    private(set) var response = Response.idle
    /// A plain HTTP request (not gRPC).
    private(set) var isPlain = false
    /// The handler was started (it may have returned since).
    private(set) var handlerStarted = false
    /// The call's outcome is decided on our side (refused, failed, or its last frame submitted):
    /// what the client still sends is ignored, it is not failed twice, and a clean close of the
    /// stream is not a cancellation.
    private(set) var finished = false

    /// Whether response headers were submitted.
    var headersSent: Bool { response != .idle }

    // MARK: Request side

    /// The HEADERS block was routed to a gRPC handler. Returns whether to start the handler now
    /// (streaming requests) rather than after the one message (single-request methods).
    mutating func acceptedCall(singleRequest: Bool) -> Bool {
        guard request == .headers else { return false }
        if singleRequest {
            request = .singleMessage(count: 0)
            return false
        }
        request = .streaming
        handlerStarted = true
        return true
    }

    /// The HEADERS block is a plain HTTP request; its body follows.
    mutating func acceptedPlain() {
        guard request == .headers else { return }
        isPlain = true
        request = .plainBody
    }

    /// What to do with a complete request message.
    enum MessageAction: Equatable {
        /// Keep it: the single request.
        case keepAsRequest
        /// Hand it to the running handler.
        case deliver
        /// Count it only (a second message for a single-request method: refused at END_STREAM),
        /// or the call no longer reads.
        case drop
    }

    mutating func messageReceived() -> MessageAction {
        guard !finished else { return .drop }
        switch request {
        case .singleMessage(let count):
            request = .singleMessage(count: count + 1)
            return count == 0 ? .keepAsRequest : .drop
        case .streaming:
            return .deliver
        case .headers, .plainBody, .closed:
            return .drop
        }
    }

    /// Whether DATA on this stream is read (otherwise it is only given back to flow control).
    var readsData: Bool {
        guard !finished else { return false }
        switch request {
        case .singleMessage, .streaming, .plainBody: return true
        case .headers, .closed: return false
        }
    }

    /// Whether a plain request's body is still awaited (its time limit applies).
    var awaitsPlainBody: Bool { !finished && request == .plainBody }

    enum EndOfInputAction: Equatable {
        case none
        /// Start the single-request handler with the message kept.
        case startHandler
        /// End the handler's request stream.
        case finishRequests
        /// The plain request is complete: run its handler.
        case startPlain
        /// The request was malformed: end the call with this status.
        case fail(RPCError)
    }

    /// The client half-closed; `strayBytes` of an unfinished message were left.
    mutating func endOfInput(strayBytes: Int, path: String) -> EndOfInputAction {
        if strayBytes > 0 {
            return .fail(RPCError(.internal, "the request ended inside a message (\(strayBytes) stray bytes)"))
        }
        guard !finished else { return .none }
        switch request {
        case .singleMessage(let count):
            request = .closed
            guard count == 1 else {
                return .fail(RPCError(.unimplemented, "\(path) takes exactly one request message, got \(count)"))
            }
            handlerStarted = true
            return .startHandler
        case .plainBody:
            request = .closed
            handlerStarted = true
            return .startPlain
        case .streaming:
            request = .closed
            return .finishRequests
        case .headers, .closed:
            return .none
        }
    }

    // MARK: Response side

    /// How to start or resume the response when the handler's writer has something.
    enum ResponseAction: Equatable {
        case none
        /// gRPC: status only, no message (headers carry the status, END_STREAM).
        case trailersOnly
        /// gRPC: response headers with initial metadata; the body follows.
        case grpcHeaders
        /// Plain HTTP: the head; `hasBody` false ends the stream with it.
        case plainHead(hasBody: Bool)
        /// Plain HTTP: the handler failed after the head: reset the stream.
        case reset
        /// Plain HTTP: the handler failed before the head: a bodiless error status.
        case refusePlain(status: Int)
        /// nghttp2 was waiting for data: resume the stream.
        case resume
    }

    /// The handler's writer has data (`hasData`), ended (`ended`, `statusOnly`: the end is a gRPC
    /// status with no message before it), or aborted a plain response (`aborted`).
    mutating func responseReady(hasData: Bool, ended: Bool, statusOnly: Bool, aborted: Bool) -> ResponseAction {
        switch response {
        case .ended:
            return .none
        case .idle:
            if isPlain {
                if aborted { return .refusePlain(status: 500) }
                guard hasData || ended else { return .none }
                response = hasData ? .open(deferred: false) : .ended
                if !hasData { finished = true }
                return .plainHead(hasBody: hasData)
            }
            if !hasData && statusOnly {
                response = .ended
                finished = true
                return .trailersOnly
            }
            guard hasData || ended else { return .none }
            response = .open(deferred: false)
            return .grpcHeaders
        case .open(let deferred):
            if isPlain && aborted {
                response = .ended
                finished = true
                return .reset
            }
            guard deferred else { return .none }
            response = .open(deferred: false)
            return .resume
        }
    }

    /// What nghttp2's data source answers.
    enum DataAction: Equatable {
        /// Send what was read.
        case send
        /// Nothing ready: defer until the writer has more.
        case deferred
        /// The last bytes: end the stream (plain HTTP) or follow them with trailers (gRPC).
        case end(trailers: Bool)
    }

    /// nghttp2 asks for body bytes; the writer gave `count` bytes and `ended` says whether its end
    /// came with them.
    mutating func dataRequested(count: Int, ended: Bool) -> DataAction {
        if ended {
            response = .ended
            finished = true
            return .end(trailers: !isPlain)
        }
        if count == 0 {
            if case .open = response { response = .open(deferred: true) }
            return .deferred
        }
        return .send
    }

    /// The call was refused or reset before its handler answered: nothing more goes out.
    mutating func refused() {
        response = .ended
        request = .closed
        finished = true
    }

    /// How to end a call that failed (deadline, malformed request, shutdown).
    enum FailAction: Equatable {
        /// Already over.
        case none
        /// Plain HTTP before its head: a bodiless 503.
        case refusePlain
        /// Plain HTTP after its head: reset.
        case reset
        /// gRPC, handler running or headers sent: end through the writer with the status, cancel the handler.
        case status
        /// gRPC, nothing started: a trailers-only refusal.
        case refuse
    }

    mutating func failed() -> FailAction {
        guard !finished else { return .none }
        if isPlain {
            if headersSent {
                refused()
                return .reset
            }
            return .refusePlain
        }
        if headersSent || handlerStarted {
            // The status goes out through the writer (trailers-only or after the messages).
            finished = true
            return .status
        }
        return .refuse
    }

    /// nghttp2 closed the stream; `errorCode` 0 is a clean close. Whether the handler must be
    /// cancelled (the call did not finish on our side, or the client reset it).
    mutating func closed(errorCode: UInt32) -> Bool {
        let cancel = !finished || errorCode != HTTP2ErrorCode.noError
        response = .ended
        request = .closed
        finished = true
        return cancel
    }
}
