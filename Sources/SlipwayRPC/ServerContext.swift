import NIOCore
import Synchronization

/// What a handler knows about its call, and how it sets response metadata.
public final class ServerContext: Sendable {
    /// The method's `:path`, `/package.Service/Method`.
    public let path: String
    /// Request metadata (custom headers; `-bin` values decoded).
    public let metadata: Metadata
    /// When the client stops waiting, from `grpc-timeout`; nil when it set none.
    public let deadline: ContinuousClock.Instant?
    /// The peer's address, for logs.
    public let peer: String
    /// Who is calling, as its client certificate names it (`spiffe://slipway/<name>`); nil on a
    /// server that does not authenticate its clients.
    public let caller: String?
    /// The caller's client certificate (DER), when the server authenticates its clients.
    public let callerCertificate: [UInt8]?
    private let trailing = Mutex(Metadata())
    let outbound: OutboundMessages

    init(
        path: String, metadata: Metadata, deadline: ContinuousClock.Instant?, peer: String, caller: String? = nil,
        callerCertificate: [UInt8]? = nil, outbound: OutboundMessages
    ) {
        self.path = path
        self.caller = caller
        self.callerCertificate = callerCertificate
        self.metadata = metadata
        self.deadline = deadline
        self.peer = peer
        self.outbound = outbound
    }

    /// Metadata sent with the response headers; call before the first response message.
    public func setInitialMetadata(_ metadata: Metadata) {
        outbound.setInitialMetadata(metadata)
    }

    /// Adds metadata to the trailers sent with the status.
    public func addTrailingMetadata(_ key: String, _ value: String) {
        trailing.withLock { $0.add(key, value) }
    }

    var trailingMetadata: Metadata { trailing.withLock { $0 } }
}

/// Sends the messages of a streaming call (responses on a server, requests on a client);
/// `write` waits while the peer is slow to read.
public struct MessageWriter<Message: Sendable>: Sendable {
    let outbound: OutboundMessages
    let encode: @Sendable (Message) -> [UInt8]

    /// Sends one message; suspends while too many bytes wait for the network.
    public func write(_ message: Message) async throws {
        try await outbound.write(encode(message))
    }
}

extension MessageWriter {
    /// The same stream, written with messages already in their wire form: for one encoding shared
    /// by many writers (a log line sent to every subscriber).
    public var preEncoded: MessageWriter<RawBytes> { MessageWriter<RawBytes>(outbound: outbound) { $0.bytes } }
}

/// The messages of a streaming call in order (requests on a server, responses on a client).
/// Iteration ends when the peer ends its side; it throws the call's error status.
public struct MessageStream<Message: Sendable>: AsyncSequence, Sendable {
    let inbound: InboundMessages
    let decode: @Sendable (ByteBuffer) throws -> Message

    public struct AsyncIterator: AsyncIteratorProtocol {
        let inbound: InboundMessages
        let decode: @Sendable (ByteBuffer) throws -> Message

        public mutating func next() async throws -> Message? {
            guard let bytes = try await inbound.next() else { return nil }
            return try decode(bytes)
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(inbound: inbound, decode: decode) }
}

/// The responses a server handler writes.
public typealias ResponseWriter<Message: Sendable> = MessageWriter<Message>
/// The requests a client writes.
public typealias RequestWriter<Message: Sendable> = MessageWriter<Message>
/// The requests a server handler reads.
public typealias RequestStream<Message: Sendable> = MessageStream<Message>
/// The responses a client reads.
public typealias ResponseStream<Message: Sendable> = MessageStream<Message>
