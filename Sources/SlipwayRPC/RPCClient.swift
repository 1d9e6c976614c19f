import NIOCore
import NIOPosix
import NIOSSL
import SlipwayProtobuf
import Synchronization

/// Per-call options: deadline and request metadata.
public struct CallOptions: Sendable {
    /// How long the call may take; sent as `grpc-timeout` and enforced here too.
    public var timeout: Duration?
    /// Request metadata.
    public var metadata: Metadata

    public init(timeout: Duration? = nil, metadata: Metadata = [:]) {
        self.timeout = timeout
        self.metadata = metadata
    }
}

/// A gRPC client: multiplexes calls over one HTTP/2 connection, reconnecting when it closes.
///
/// ```swift
/// let client = RPCClient(host: "127.0.0.1", port: 7000)
/// let reply = try await client.unary(Grpc_Health_V1_Health.Check.self, .init())
/// ```
public final class RPCClient: Sendable {
    /// Client TLS: roots to trust (system roots when nil) and an optional certificate for mTLS.
    public struct TLS: Sendable {
        public var trustRoots: NIOSSLTrustRoots
        public var certificateChain: [NIOSSLCertificate]
        public var privateKey: NIOSSLPrivateKey?
        /// Name to verify and send as SNI; the host when nil.
        public var serverHostname: String?

        public init(trustRoots: NIOSSLTrustRoots = .default, certificateChain: [NIOSSLCertificate] = [], privateKey: NIOSSLPrivateKey? = nil, serverHostname: String? = nil) {
            self.trustRoots = trustRoots
            self.certificateChain = certificateChain
            self.privateKey = privateKey
            self.serverHostname = serverHostname
        }
    }

    private enum Connection {
        case idle
        case connecting(EventLoopFuture<ConnectedChannel>)
        case ready(ConnectedChannel)
        case closed
    }

    struct ConnectedChannel: Sendable {
        let channel: any Channel
        let handler: NIOLoopBound<ClientConnectionHandler>
    }

    public let host: String
    public let port: Int
    /// The TLS each new connection uses (read at every connect: a renewed certificate is used from
    /// the next connection on); nil: plaintext h2c.
    private let tls: (@Sendable () -> TLS)?
    private let limits: RPCLimits
    private let timings: ConnectionTimings
    private let group: any EventLoopGroup
    private let connection = Mutex(Connection.idle)

    public init(
        host: String, port: Int, tls: TLS? = nil, limits: RPCLimits = RPCLimits(),
        timings: ConnectionTimings = ConnectionTimings(), group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.host = host
        self.port = port
        if let tls { self.tls = { tls } } else { self.tls = nil }
        self.limits = limits
        self.timings = timings
        self.group = group
    }

    /// A client whose TLS is read at each new connection, so that renewed client certificates are
    /// presented without rebuilding the client.
    public init(
        host: String, port: Int, tls: @escaping @Sendable () -> TLS, limits: RPCLimits = RPCLimits(),
        timings: ConnectionTimings = ConnectionTimings(), group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.host = host
        self.port = port
        self.tls = tls
        self.limits = limits
        self.timings = timings
        self.group = group
    }

    /// Closes the connection; calls in flight fail with UNAVAILABLE and later calls are refused.
    public func close() async {
        let current = connection.withLock { state -> Connection in
            let current = state
            state = .closed
            return current
        }
        switch current {
        case .ready(let connected): try? await connected.channel.close()
        case .connecting(let future): try? await future.get().channel.close()
        case .idle, .closed: break
        }
    }

    /// The live connection, opening one when there is none.
    func connected() async throws -> ConnectedChannel {
        let (future, created) = try connection.withLock { state throws(RPCError) -> (EventLoopFuture<ConnectedChannel>, Bool) in
            switch state {
            case .ready(let connected): return (connected.channel.eventLoop.makeSucceededFuture(connected), false)
            case .connecting(let future): return (future, false)
            case .closed: throw RPCError(.unavailable, "the client was closed")
            case .idle:
                let future = connect()
                state = .connecting(future)
                return (future, true)
            }
        }
        if created {
            future.whenComplete { result in
                self.connection.withLock { state in
                    guard case .connecting = state else { return }
                    switch result {
                    case .success(let connected): state = .ready(connected)
                    case .failure: state = .idle
                    }
                }
            }
        }
        do {
            return try await future.get()
        } catch let error as RPCError {
            throw error
        } catch {
            throw RPCError(.unavailable, "cannot connect to \(host):\(port): \(error)")
        }
    }

    private func connect() -> EventLoopFuture<ConnectedChannel> {
        let authority = "\(host):\(port)"
        let limits = self.limits
        let timings = self.timings
        let tls = self.tls?()
        let host = self.host
        let eventLoop = group.next()
        let bootstrap = ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        var configuration = TLSConfiguration.makeClientConfiguration()
                        configuration.applicationProtocols = ["h2"]
                        configuration.trustRoots = tls.trustRoots
                        configuration.certificateChain = tls.certificateChain.map { .certificate($0) }
                        configuration.privateKey = tls.privateKey.map { .privateKey($0) }
                        let context = try NIOSSLContext(configuration: configuration)
                        // SNI carries names only: for an IP literal the certificate is checked against the address.
                        let name = tls.serverHostname ?? host
                        let isAddress = (try? SocketAddress(ipAddress: name, port: 0)) != nil
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: context, serverHostname: isAddress ? nil : name))
                    }
                    let handler = ClientConnectionHandler(authority: authority, scheme: tls == nil ? "http" : "https", limits: limits, timings: timings)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        return bootstrap.connect(host: host, port: port).flatMap { channel in
            channel.eventLoop.makeCompletedFuture {
                let handler = try channel.pipeline.syncOperations.handler(type: ClientConnectionHandler.self)
                let connected = ConnectedChannel(channel: channel, handler: NIOLoopBound(handler, eventLoop: channel.eventLoop))
                // When the connection stops taking calls, the next call opens a new one.
                handler.onStopAccepting = { [weak self] in self?.forget(channel) }
                channel.closeFuture.whenComplete { _ in self.forget(channel) }
                return connected
            }
        }
    }

    private func forget(_ channel: any Channel) {
        connection.withLock { state in
            if case .ready(let connected) = state, connected.channel === channel { state = .idle }
        }
    }

    // MARK: Calls

    /// Starts a call; the low-level API the typed calls are built on.
    public func makeCall(path: String, options: CallOptions = CallOptions()) async throws -> ClientCall {
        let connected = try await connected()
        let eventLoop = connected.channel.eventLoop
        let loopBound = connected.handler
        let idBox = StreamIDBox()
        let outbound = OutboundMessages(
            allocator: connected.channel.allocator, highWatermark: limits.outboundHighWatermark, maxMessageSize: limits.maxMessageSize
        ) {
            eventLoop.execute { if let id = idBox.id { loopBound.value.outboundReady(id) } }
        }
        let inbound = InboundMessages(windowHoldback: limits.initialStreamWindow) {
            eventLoop.execute { if let id = idBox.id { loopBound.value.releaseWindow(id) } }
        }
        let response = ClientResponseState()
        let maxMessageSize = limits.maxMessageSize
        let allocator = connected.channel.allocator
        eventLoop.execute {
            let stream = ClientStream(outbound: outbound, inbound: inbound, response: response, maxMessageSize: maxMessageSize, allocator: allocator)
            loopBound.value.startCall(path: path, options: options, stream: stream, idBox: idBox)
        }
        return ClientCall(outbound: outbound, inbound: inbound, response: response) { error in
            eventLoop.execute {
                if let id = idBox.id {
                    loopBound.value.cancel(id, error)
                } else {
                    inbound.finish(error)
                    outbound.fail(error)
                }
            }
        }
    }

    /// A unary call.
    public func unary<I: ProtoMessage, O: ProtoMessage>(
        _ path: String, request: I, responseType: O.Type = O.self, options: CallOptions = CallOptions()
    ) async throws -> O {
        let call = try await makeCall(path: path, options: options)
        return try await call.withCancellation {
            try call.outbound.writeNow(request.serializedBytes())
            call.finishSending()
            return try await call.singleResponse(O.self)
        }
    }

    /// A server-streaming call: `body` reads the responses.
    public func serverStreaming<I: ProtoMessage, O: ProtoMessage, R: Sendable>(
        _ path: String, request: I, responseType: O.Type = O.self, options: CallOptions = CallOptions(),
        isolation: isolated (any Actor)? = #isolation,
        _ body: (ResponseStream<O>) async throws -> R
    ) async throws -> R {
        let call = try await makeCall(path: path, options: options)
        return try await call.withCancellation {
            try call.outbound.writeNow(request.serializedBytes())
            call.finishSending()
            return try await body(call.responses(O.self))
        }
    }

    /// A client-streaming call: `requests` writes the requests; returns the single response.
    public func clientStreaming<I: ProtoMessage, O: ProtoMessage>(
        _ path: String, requestType: I.Type = I.self, responseType: O.Type = O.self, options: CallOptions = CallOptions(),
        isolation: isolated (any Actor)? = #isolation,
        _ requests: (RequestWriter<I>) async throws -> Void
    ) async throws -> O {
        let call = try await makeCall(path: path, options: options)
        return try await call.withCancellation {
            try await requests(call.requests(I.self))
            call.finishSending()
            return try await call.singleResponse(O.self)
        }
    }

    /// A bidirectional call: `requests` writes while `responses` reads, concurrently.
    public func bidirectional<I: ProtoMessage, O: ProtoMessage, R: Sendable>(
        _ path: String, requestType: I.Type = I.self, responseType: O.Type = O.self, options: CallOptions = CallOptions(),
        isolation: isolated (any Actor)? = #isolation,
        requests: @escaping @Sendable (RequestWriter<I>) async throws -> Void,
        responses: (ResponseStream<O>) async throws -> R
    ) async throws -> R {
        let call = try await makeCall(path: path, options: options)
        return try await call.withCancellation {
            try await withThrowingTaskGroup(of: Void.self, returning: R.self, isolation: isolation) { group in
                group.addTask {
                    try await requests(call.requests(I.self))
                    call.finishSending()
                }
                let result = try await responses(call.responses(O.self))
                try await group.waitForAll()
                return result
            }
        }
    }

    // MARK: Calls by generated method descriptor

    public func unary<M: ProtoMethod>(_ method: M.Type, _ request: M.Input, options: CallOptions = CallOptions()) async throws -> M.Output {
        try await unary(M.path, request: request, responseType: M.Output.self, options: options)
    }

    public func serverStreaming<M: ProtoMethod, R: Sendable>(
        _ method: M.Type, _ request: M.Input, options: CallOptions = CallOptions(),
        isolation: isolated (any Actor)? = #isolation, _ body: (ResponseStream<M.Output>) async throws -> R
    ) async throws -> R {
        try await serverStreaming(M.path, request: request, responseType: M.Output.self, options: options, isolation: isolation, body)
    }

    public func clientStreaming<M: ProtoMethod>(
        _ method: M.Type, options: CallOptions = CallOptions(),
        isolation: isolated (any Actor)? = #isolation, _ requests: (RequestWriter<M.Input>) async throws -> Void
    ) async throws -> M.Output {
        try await clientStreaming(M.path, requestType: M.Input.self, responseType: M.Output.self, options: options, isolation: isolation, requests)
    }

    public func bidirectional<M: ProtoMethod, R: Sendable>(
        _ method: M.Type, options: CallOptions = CallOptions(),
        isolation: isolated (any Actor)? = #isolation,
        requests: @escaping @Sendable (RequestWriter<M.Input>) async throws -> Void,
        responses: (ResponseStream<M.Output>) async throws -> R
    ) async throws -> R {
        try await bidirectional(
            M.path, requestType: M.Input.self, responseType: M.Output.self, options: options, isolation: isolation,
            requests: requests, responses: responses)
    }
}

/// One client call in progress: write requests, read responses, read metadata, cancel.
public struct ClientCall: Sendable {
    let outbound: OutboundMessages
    let inbound: InboundMessages
    let response: ClientResponseState
    let cancelAction: @Sendable (RPCError) -> Void

    init(outbound: OutboundMessages, inbound: InboundMessages, response: ClientResponseState, cancel: @escaping @Sendable (RPCError) -> Void) {
        self.outbound = outbound
        self.inbound = inbound
        self.response = response
        self.cancelAction = cancel
    }

    /// The requests, as a writer.
    public func requests<I: ProtoMessage>(_ type: I.Type) -> RequestWriter<I> {
        MessageWriter(outbound: outbound) { $0.serializedBytes() }
    }

    /// The responses, as a stream; iteration throws the call's error status.
    public func responses<O: ProtoMessage>(_ type: O.Type) -> ResponseStream<O> {
        MessageStream(inbound: inbound) { bytes in
            do {
                return try bytes.withUnsafeReadableBytes { buffer throws(ProtoDecodingError) in try O(serializedBuffer: buffer) }
            } catch let error as ProtoDecodingError {
                throw RPCError(.internal, "cannot decode the response: \(error.description)")
            }
        }
    }

    /// Half-closes: no more requests.
    public func finishSending() { outbound.finish(.endStream) }

    /// Cancels the call (RST_STREAM CANCEL); reads and writes then fail with CANCELLED.
    public func cancel() { cancelAction(RPCError(.cancelled, "the call was cancelled by the client")) }

    /// Metadata of the response headers (complete once the first response or the status arrived).
    public var initialMetadata: Metadata { response.initial }
    /// Metadata of the trailers (complete once the responses ended).
    public var trailingMetadata: Metadata { response.trailing }

    func singleResponse<O: ProtoMessage>(_ type: O.Type) async throws -> O {
        var iterator = responses(O.self).makeAsyncIterator()
        guard let first = try await iterator.next() else {
            throw RPCError(.unimplemented, "the server sent no response message for a call that expects one")
        }
        guard try await iterator.next() == nil else {
            throw RPCError(.unimplemented, "the server sent more than one response message for a call that expects one")
        }
        return first
    }

    /// Runs `body`; cancelling the task cancels the call.
    func withCancellation<R>(isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> R) async throws -> R {
        do {
            return try await withTaskCancellationHandler(operation: {
                try await body()
            }, onCancel: {
                self.cancel()
            }, isolation: isolation)
        } catch let error as RPCError {
            throw error
        } catch is CancellationError {
            throw RPCError(.cancelled, "the call was cancelled by the client")
        }
    }
}

/// The stream id of a client call, set on the event loop once the stream is open.
final class StreamIDBox: Sendable {
    private let value = Atomic<Int32>(0)
    func set(_ id: Int32) { value.store(id, ordering: .releasing) }
    var id: Int32? {
        let id = value.load(ordering: .acquiring)
        return id == 0 ? nil : id
    }
}
