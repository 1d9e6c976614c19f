/// The explicit limits of the RPC layer. Every one is documented in docs/limits.md.
public struct RPCLimits: Sendable, Hashable {
    /// Largest message accepted or sent, in bytes (payload, without the 5-byte prefix).
    /// A larger one ends the call with `RESOURCE_EXHAUSTED`. Default 4 MiB, as in gRPC.
    public var maxMessageSize: Int = 4 * 1024 * 1024
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to the peer: calls open at once per connection.
    /// Default 256.
    public var maxConcurrentStreams: Int = 256
    /// SETTINGS_MAX_HEADER_LIST_SIZE: total size of one header block the peer may send. Default 16 KiB.
    public var maxHeaderListSize: Int = 16 * 1024
    /// Initial HTTP/2 flow-control window per stream, in bytes. Default 1 MiB.
    public var initialStreamWindow: Int = 1024 * 1024
    /// HTTP/2 flow-control window for the whole connection, in bytes. Default 8 MiB.
    public var connectionWindow: Int = 8 * 1024 * 1024
    /// Bytes of encoded responses a writer may queue on one stream before `write` waits. Default 256 KiB.
    public var outboundHighWatermark: Int = 256 * 1024
    /// Connections a server keeps open at once (gRPC and plain HTTP alike); one more is closed as
    /// soon as it is accepted. Default 4096. Clients ignore it.
    public var maxConnections: Int = 4096

    public init() {}
}

/// Connection management timing (keepalive, idle, shutdown).
public struct ConnectionTimings: Sendable, Hashable {
    /// Interval between keepalive PINGs on an otherwise quiet connection; nil disables them.
    public var keepaliveInterval: Duration? = .seconds(60)
    /// How long to wait for a PING acknowledgement before closing the connection.
    public var keepaliveTimeout: Duration = .seconds(20)
    /// A connection with no open call for this long is closed with GOAWAY; nil keeps it forever.
    public var idleTimeout: Duration? = .seconds(300)
    /// On graceful shutdown, in-flight calls may finish for this long before they are cancelled.
    public var shutdownGracePeriod: Duration = .seconds(10)

    public init() {}
}
