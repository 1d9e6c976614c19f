import NIOCore
import SlipwayProtobuf

/// A method handler with its messages erased to bytes: what the connection dispatches on.
enum MethodHandler: Sendable {
    /// Unary, async: runs in its own task.
    case unary(@Sendable (ByteBuffer, ServerContext) async throws -> [UInt8])
    /// Unary, synchronous on the event loop: for handlers that never block (health checks, echo).
    case unaryOnEventLoop(@Sendable (ByteBuffer, ServerContext) throws -> [UInt8])
    case serverStreaming(@Sendable (ByteBuffer, OutboundMessages, ServerContext) async throws -> Void)
    case clientStreaming(@Sendable (InboundMessages, ServerContext) async throws -> [UInt8])
    case bidirectional(@Sendable (InboundMessages, OutboundMessages, ServerContext) async throws -> Void)

    /// Whether the handler takes a single request message (unary and server streaming).
    var takesSingleRequest: Bool {
        switch self {
        case .unary, .unaryOnEventLoop, .serverStreaming: true
        case .clientStreaming, .bidirectional: false
        }
    }
}

/// A group of methods registered together, with what reflection says about them.
public protocol RPCService: Sendable {
    /// Adds the service's methods to the router.
    func register(with router: inout RPCRouter)
}

/// Maps `:path` to handlers. Build one, register services, pass it to ``RPCServer``.
///
/// ```swift
/// var router = RPCRouter()
/// router.unary(Grpc_Health_V1_Health.Check.self) { request, context in ... }
/// ```
public struct RPCRouter: Sendable {
    var handlers: [String: MethodHandler] = [:]
    /// Services registered, for reflection and health: fully qualified names.
    public private(set) var serviceNames: Set<String> = []
    /// Files describing the registered services, for reflection.
    public private(set) var files: [ProtoFileDescriptor] = []
    /// HTTP/1.1 on the same port, beside gRPC (the gateway's webhooks and event streams); nil: gRPC only.
    public var http1: HTTP1Initializer?
    /// HTTP/2 requests that are not gRPC (content-type not application/grpc), e.g. a browser or curl
    /// after ALPN chose h2; nil: they get 415.
    public var plainHTTP: PlainHTTPHandler?
    /// The largest plain HTTP/2 request body accepted; a larger one is answered 413 before the
    /// handler runs.
    public var plainHTTPMaxBodyBytes = 4 * 1024 * 1024
    /// Who may call which method, by client certificate; nil: whoever reaches the port. Calls outside
    /// it end with PERMISSION_DENIED (UNAUTHENTICATED without a certificate) before any handler runs.
    public var accessPolicy: AccessPolicy?

    public init() {}

    /// Every registered method's `:path`.
    public var methodPaths: [String] { handlers.keys.sorted() }

    /// Registers every method of `service`.
    public mutating func register(_ service: some RPCService) {
        service.register(with: &self)
    }

    /// Declares descriptor files reflection serves (the service's file and its imports).
    public mutating func addFiles(_ descriptors: [ProtoFileDescriptor]) {
        for file in descriptors where !files.contains(where: { $0.name == file.name }) {
            files.append(file)
        }
    }

    mutating func add(_ path: String, _ handler: MethodHandler) {
        handlers[path] = handler
        let trimmed = path.dropFirst()
        if let slash = trimmed.firstIndex(of: "/") { serviceNames.insert(String(trimmed[..<slash])) }
    }

    // MARK: Typed registration

    /// A unary method.
    public mutating func unary<I: ProtoMessage, O: ProtoMessage>(
        _ path: String, _ input: I.Type = I.self, _ output: O.Type = O.self,
        _ handler: @escaping @Sendable (I, ServerContext) async throws -> O
    ) {
        add(path, .unary { bytes, context in
            try await handler(try Self.decode(I.self, bytes), context).serializedBytes()
        })
    }

    /// A unary method that runs on the connection's event loop: it must not block or await.
    public mutating func unaryOnEventLoop<I: ProtoMessage, O: ProtoMessage>(
        _ path: String, _ input: I.Type = I.self, _ output: O.Type = O.self,
        _ handler: @escaping @Sendable (I, ServerContext) throws -> O
    ) {
        add(path, .unaryOnEventLoop { bytes, context in
            try handler(try Self.decode(I.self, bytes), context).serializedBytes()
        })
    }

    /// A server-streaming method: one request, any number of responses.
    public mutating func serverStreaming<I: ProtoMessage, O: ProtoMessage>(
        _ path: String, _ input: I.Type = I.self, _ output: O.Type = O.self,
        _ handler: @escaping @Sendable (I, ResponseWriter<O>, ServerContext) async throws -> Void
    ) {
        add(path, .serverStreaming { bytes, outbound, context in
            try await handler(try Self.decode(I.self, bytes), ResponseWriter(outbound: outbound) { $0.serializedBytes() }, context)
        })
    }

    /// A client-streaming method: a stream of requests, one response.
    public mutating func clientStreaming<I: ProtoMessage, O: ProtoMessage>(
        _ path: String, _ input: I.Type = I.self, _ output: O.Type = O.self,
        _ handler: @escaping @Sendable (RequestStream<I>, ServerContext) async throws -> O
    ) {
        add(path, .clientStreaming { inbound, context in
            try await handler(RequestStream(inbound: inbound) { try Self.decode(I.self, $0) }, context).serializedBytes()
        })
    }

    /// A bidirectional-streaming method.
    public mutating func bidirectional<I: ProtoMessage, O: ProtoMessage>(
        _ path: String, _ input: I.Type = I.self, _ output: O.Type = O.self,
        _ handler: @escaping @Sendable (RequestStream<I>, ResponseWriter<O>, ServerContext) async throws -> Void
    ) {
        add(path, .bidirectional { inbound, outbound, context in
            try await handler(
                RequestStream(inbound: inbound) { try Self.decode(I.self, $0) },
                ResponseWriter(outbound: outbound) { $0.serializedBytes() }, context)
        })
    }

    // MARK: Registration by generated method descriptor

    public mutating func unary<M: ProtoMethod>(_ method: M.Type, _ handler: @escaping @Sendable (M.Input, ServerContext) async throws -> M.Output) {
        unary(M.path, M.Input.self, M.Output.self, handler)
    }

    public mutating func unaryOnEventLoop<M: ProtoMethod>(_ method: M.Type, _ handler: @escaping @Sendable (M.Input, ServerContext) throws -> M.Output) {
        unaryOnEventLoop(M.path, M.Input.self, M.Output.self, handler)
    }

    public mutating func serverStreaming<M: ProtoMethod>(_ method: M.Type, _ handler: @escaping @Sendable (M.Input, ResponseWriter<M.Output>, ServerContext) async throws -> Void) {
        serverStreaming(M.path, M.Input.self, M.Output.self, handler)
    }

    public mutating func clientStreaming<M: ProtoMethod>(_ method: M.Type, _ handler: @escaping @Sendable (RequestStream<M.Input>, ServerContext) async throws -> M.Output) {
        clientStreaming(M.path, M.Input.self, M.Output.self, handler)
    }

    public mutating func bidirectional<M: ProtoMethod>(_ method: M.Type, _ handler: @escaping @Sendable (RequestStream<M.Input>, ResponseWriter<M.Output>, ServerContext) async throws -> Void) {
        bidirectional(M.path, M.Input.self, M.Output.self, handler)
    }

    static func decode<I: ProtoMessage>(_ type: I.Type, _ bytes: ByteBuffer) throws(RPCError) -> I {
        do {
            return try bytes.withUnsafeReadableBytes { buffer throws(ProtoDecodingError) in try I(serializedBuffer: buffer) }
        } catch {
            throw RPCError(.invalidArgument, error.description)
        }
    }
}

/// Raw bytes as a message: for methods without a schema (benchmarks, proxies).
public struct RawBytes: ProtoMessage, Hashable {
    public static let protoMessageName = "bytes"
    /// The payload.
    public var bytes: [UInt8]

    public init() { bytes = [] }
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public init(serializedBuffer: UnsafeRawBufferPointer) throws(ProtoDecodingError) { bytes = Array(serializedBuffer) }
    public func serializedBytes() -> [UInt8] { bytes }
}
