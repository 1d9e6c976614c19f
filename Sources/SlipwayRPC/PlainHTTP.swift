/// A plain HTTP request that reached a gRPC server: an HTTP/1.1 request (through
/// ``HTTP1Initializer``), or an HTTP/2 stream whose content-type is not `application/grpc` — what
/// browsers and curl send when TLS's ALPN picks `h2`.
public struct PlainHTTPRequest: Sendable {
    public var method: String
    /// The path with its query, as sent.
    public var target: String
    /// Lower-case names.
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    /// The body was longer than the server's limit; `body` is empty.
    public var bodyTooLarge: Bool
    /// The client's IP address (nil when unknown).
    public var remoteAddress: String?

    public init(
        method: String, target: String, headers: [(name: String, value: String)], body: [UInt8], bodyTooLarge: Bool = false, remoteAddress: String? = nil
    ) {
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.bodyTooLarge = bodyTooLarge
        self.remoteAddress = remoteAddress
    }

    /// The first value of a header.
    public func header(_ name: String) -> String? {
        let name = name.lowercased()
        return headers.first { $0.name == name }?.value
    }
}

/// Sends a plain HTTP response: its head once, then body parts (each waits while the client is
/// slow to read, and fails once the client has gone).
public struct PlainHTTPResponseWriter: Sendable {
    let startHead: @Sendable (Int, [(String, String)]) -> Void
    let writeBody: @Sendable ([UInt8]) async throws -> Void

    public init(start: @escaping @Sendable (Int, [(String, String)]) -> Void, write: @escaping @Sendable ([UInt8]) async throws -> Void) {
        self.startHead = start
        self.writeBody = write
    }

    /// The status and headers (lower-case names, no hop-by-hop headers); call once, before writing.
    public func start(status: Int, headers: [(String, String)]) { startHead(status, headers) }

    public func write(_ bytes: [UInt8]) async throws { try await writeBody(bytes) }
}

/// Serves plain HTTP requests beside gRPC; the response ends when it returns.
public typealias PlainHTTPHandler = @Sendable (PlainHTTPRequest, PlainHTTPResponseWriter) async throws -> Void
