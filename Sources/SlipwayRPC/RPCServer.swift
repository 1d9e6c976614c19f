import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Synchronization

/// A gRPC server on nghttp2: h2c with prior knowledge, or TLS with ALPN `h2`. With an
/// ``HTTP1Initializer`` the same port also serves HTTP/1.1 (TLS offers `h2` and `http/1.1`).
///
/// ```swift
/// var router = RPCRouter()
/// router.register(HealthService(...))
/// let server = RPCServer(host: "127.0.0.1", port: 7000, router: router, logger: logger)
/// try await ServiceGroup(services: [server], logger: logger).run()
/// ```
public final class RPCServer: Service, Sendable {
    /// Server TLS: a certificate chain and key; with `trustRoots` set, clients must present a certificate (mTLS).
    public struct TLS: Sendable {
        public var certificateChain: [NIOSSLCertificate]
        public var privateKey: NIOSSLPrivateKey
        public var trustRoots: NIOSSLTrustRoots?
        /// Decides on each client certificate in place of the chain check against `trustRoots`,
        /// and names the caller (``ServerContext/caller``). With it, a client must present a
        /// certificate, and, unless the server also speaks HTTP/1.1, negotiate `h2` with ALPN.
        public var verifyClient: ClientCertificateVerifier?

        public init(
            certificateChain: [NIOSSLCertificate], privateKey: NIOSSLPrivateKey, trustRoots: NIOSSLTrustRoots? = nil,
            verifyClient: ClientCertificateVerifier? = nil
        ) {
            self.certificateChain = certificateChain
            self.privateKey = privateKey
            self.trustRoots = trustRoots
            self.verifyClient = verifyClient
        }

        /// Loads PEM files.
        public init(certificatePath: String, keyPath: String, clientCAPath: String? = nil) throws {
            self.certificateChain = try NIOSSLCertificate.fromPEMFile(certificatePath)
            self.privateKey = try NIOSSLPrivateKey(file: keyPath, format: .pem)
            self.trustRoots = clientCAPath.map { .file($0) }
        }
    }

    private let host: String
    private let port: Int
    private let handlers: [String: MethodHandler]
    private let plainHTTP: PlainHTTPHandler?
    private let plainHTTPMaxBodyBytes: Int
    private let tls: TLS?
    private let http1: HTTP1Initializer?
    private let limits: RPCLimits
    private let timings: ConnectionTimings
    private let logger: Logger
    private let group: any EventLoopGroup
    /// Every call's handler task: `run` returns only once they have all ended.
    private let handlerTasks = HandlerTasks()
    private let state = Mutex(State())
    /// The TLS context new connections get, with its client check (replaced by ``reloadTLS(_:)``).
    private let sslContext = Mutex<(context: NIOSSLContext, verifyClient: ClientCertificateVerifier?)?>(nil)
    private let accessPolicy: AccessPolicy?
    private let bound: EventLoopPromise<SocketAddress>

    private struct State {
        var serverChannel: (any Channel)?
        var connections: [ObjectIdentifier: any Channel] = [:]
        var shuttingDown = false
        /// Connections closed at once for the limit (logged at the first and every 1000th).
        var refusedConnections = 0
    }

    public init(
        host: String, port: Int, router: RPCRouter, tls: TLS? = nil, http1: HTTP1Initializer? = nil,
        limits: RPCLimits = RPCLimits(), timings: ConnectionTimings = ConnectionTimings(),
        logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.host = host
        self.port = port
        self.handlers = router.handlers
        self.plainHTTP = router.plainHTTP
        self.plainHTTPMaxBodyBytes = router.plainHTTPMaxBodyBytes
        self.tls = tls
        self.http1 = http1 ?? router.http1
        self.accessPolicy = router.accessPolicy
        self.limits = limits
        self.timings = timings
        self.logger = logger
        self.group = group
        self.bound = group.next().makePromise()
    }

    /// The address the server listens on, once it does (useful with port 0).
    public var listeningAddress: SocketAddress {
        get async throws { try await bound.futureResult.get() }
    }

    private func makeContext(_ tls: TLS) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: tls.certificateChain.map { .certificate($0) }, privateKey: .privateKey(tls.privateKey))
        configuration.applicationProtocols = http1 == nil ? ["h2"] : ["h2", "http/1.1"]
        if let roots = tls.trustRoots {
            configuration.trustRoots = roots
            configuration.certificateVerification = .noHostnameVerification
        } else if tls.verifyClient != nil {
            configuration.certificateVerification = .noHostnameVerification
        }
        return try NIOSSLContext(configuration: configuration)
    }

    /// Serves a new certificate and key from the next connection on (a renewed certificate);
    /// connections already open keep theirs. The server must have started with TLS.
    public func reloadTLS(_ tls: TLS) throws {
        let context = try makeContext(tls)
        let replaced = sslContext.withLock { current -> Bool in
            guard current != nil else { return false }
            current = (context, tls.verifyClient)
            return true
        }
        guard replaced else { throw RPCServerError(message: "the server was started without TLS; it cannot switch to TLS") }
    }

    /// Serves until graceful shutdown (SIGTERM through a `ServiceGroup`) or cancellation.
    public func run() async throws {
        if let tls {
            let context = try makeContext(tls)
            sslContext.withLock { $0 = (context, tls.verifyClient) }
        }
        let accessPolicy = self.accessPolicy
        let handlers = self.handlers
        let limits = self.limits
        let timings = self.timings
        let logger = self.logger
        let http1 = self.http1
        let plainHTTP = self.plainHTTP
        let plainHTTPMaxBodyBytes = self.plainHTTPMaxBodyBytes
        let tasks = self.handlerTasks
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.writeBufferWaterMark, value: .init(low: 256 * 1024, high: 1024 * 1024))
                .childChannelInitializer { [self] channel in
                    channel.eventLoop.makeCompletedFuture {
                        // Over the connection cap: closed before any handler (or TLS) runs.
                        guard self.track(channel, limit: limits.maxConnections) else {
                            channel.close(promise: nil)
                            return
                        }
                        var authentication: PeerAuthentication?
                        if let (context, verifyClient) = self.sslContext.withLock({ $0 }) {
                            if let verifyClient {
                                let peer = PeerAuthentication(verify: verifyClient)
                                authentication = peer
                                try channel.pipeline.syncOperations.addHandler(
                                    NIOSSLServerHandler(context: context, customVerificationCallback: peer.verificationCallback()))
                                try channel.pipeline.syncOperations.addHandler(TLSPeerGate(authentication: peer, requireHTTP2: http1 == nil, logger: logger))
                            } else {
                                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                            }
                        }
                        let addHTTP2 = { [authentication] (channel: any Channel) throws in
                            try channel.pipeline.syncOperations.addHandler(
                                ServerConnectionHandler(
                                    handlers: handlers, plainHTTP: plainHTTP, plainHTTPMaxBodyBytes: plainHTTPMaxBodyBytes, limits: limits,
                                    timings: timings, tasks: tasks, accessPolicy: accessPolicy, peer: authentication, logger: logger))
                        }
                        if let http1 {
                            try channel.pipeline.syncOperations.addHandler(
                                ProtocolSniffer(http2: addHTTP2, http1: http1, spawn: { body in _ = tasks.spawn(body) }))
                        } else {
                            try addHTTP2(channel)
                        }
                    }
                }
                .bind(host: host, port: port)
                .get()
        } catch {
            bound.fail(error)
            throw RPCServerError(message: "cannot listen on \(host):\(port): \(error)")
        }
        state.withLock { $0.serverChannel = channel }
        if let address = channel.localAddress { bound.succeed(address) }
        logger.info("serving gRPC", metadata: ["address": "\(channel.localAddress?.description ?? "?")", "tls": "\(tls != nil)"])

        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                try await channel.closeFuture.get()
            } onGracefulShutdown: {
                self.shutdown()
            }
        } onCancel: {
            self.shutdown()
        }
        // The listener is closed; wait for connections to drain (each bounded by its grace period).
        let open = state.withLock { Array($0.connections.values) }
        for connection in open { try? await connection.closeFuture.get() }
        // Every connection is closed and its calls cancelled: wait until each handler has returned.
        await handlerTasks.waitForAll()
        logger.info("stopped serving gRPC")
    }

    /// Stops accepting connections and drains the open ones (GOAWAY, grace period, then cancel).
    public func shutdown() {
        let (listener, open) = state.withLock { state -> ((any Channel)?, [any Channel]) in
            state.shuttingDown = true
            return (state.serverChannel, Array(state.connections.values))
        }
        listener?.close(promise: nil)
        for connection in open {
            connection.pipeline.fireUserInboundEventTriggered(GracefulShutdownEvent())
        }
    }

    /// Counts a new connection; false (not counted) when `limit` are open already.
    private func track(_ channel: any Channel, limit: Int) -> Bool {
        let id = ObjectIdentifier(channel)
        let (accepted, refuse, refused) = state.withLock { state -> (Bool, Bool, Int) in
            guard state.connections.count < limit else {
                state.refusedConnections += 1
                return (false, false, state.refusedConnections)
            }
            state.connections[id] = channel
            return (true, state.shuttingDown, 0)
        }
        guard accepted else {
            if refused % 1000 == 1 {
                logger.warning(
                    "connections refused: the server's connection limit is reached",
                    metadata: ["limit": "\(limit)", "refused": "\(refused)", "peer": "\(channel.remoteAddress?.description ?? "?")"])
            }
            return false
        }
        if refuse {
            // Told once the handlers are in place.
            channel.eventLoop.execute { channel.pipeline.fireUserInboundEventTriggered(GracefulShutdownEvent()) }
        }
        channel.closeFuture.whenComplete { _ in
            self.state.withLock { _ = $0.connections.removeValue(forKey: id) }
        }
        return true
    }
}

/// The server could not start.
public struct RPCServerError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

extension Duration {
    /// Whole nanoseconds, saturating.
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : product + attoseconds / 1_000_000_000
    }

    var timeAmount: TimeAmount { .nanoseconds(nanoseconds) }
}
