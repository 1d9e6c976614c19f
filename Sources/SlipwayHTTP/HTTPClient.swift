import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A small HTTP/1.1 client for registry, token and ACME endpoints: one connection per request
/// (`Connection: close`), a bounded response body, a deadline.
public struct HTTPClient: Sendable {
    public struct Response: Sendable {
        public var status: Int
        public var headers: HTTPHeaders
        public var body: [UInt8]
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public var group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    public var timeout: TimeAmount = .seconds(30)
    /// Largest response body read; registry manifests, tokens and certificate chains are a few KiB.
    public var maxBodyBytes = 4 * 1024 * 1024
    /// Skip TLS certificate verification (registries marked insecure).
    public var insecureTLS = false
    /// Trust these roots instead of the system's (a private CA, pebble's test CA).
    public var trustRoots: [NIOSSLCertificate]?
    /// A client certificate (chain) and its key, for servers that authenticate clients by TLS
    /// (a Kubernetes API server with a kubeconfig's client-certificate-data).
    public var clientCertificate: (chain: [NIOSSLCertificate], key: NIOSSLPrivateKey)?

    public init(timeout: TimeAmount = .seconds(30), maxBodyBytes: Int = 4 * 1024 * 1024, insecureTLS: Bool = false, trustRoots: [NIOSSLCertificate]? = nil) {
        self.timeout = timeout
        self.maxBodyBytes = maxBodyBytes
        self.insecureTLS = insecureTLS
        self.trustRoots = trustRoots
    }

    public func send(_ method: HTTPMethod, _ url: URL, headers: HTTPHeaders = [:], body: [UInt8]? = nil) async throws -> Response {
        guard let scheme = url.scheme, scheme == "http" || scheme == "https", let host = url.host else {
            throw Failure(description: "unsupported URL \(url.absoluteString)")
        }
        let tls = scheme == "https"
        let port = url.port ?? (tls ? 443 : 80)
        // URL.path drops a trailing slash ("/v2/" → "/v2"), which registries redirect: use the raw path.
        let components = URLComponents(url: url, resolvingAgainstBaseURL: false)
        var target = components?.percentEncodedPath ?? "/"
        if target.isEmpty { target = "/" }
        if let query = components?.percentEncodedQuery { target += "?" + query }

        var requestHeaders = headers
        requestHeaders.replaceOrAdd(name: "Host", value: url.port.map { "\(host):\($0)" } ?? host)
        requestHeaders.replaceOrAdd(name: "Connection", value: "close")
        requestHeaders.replaceOrAdd(name: "User-Agent", value: "slipway")
        if let body { requestHeaders.replaceOrAdd(name: "Content-Length", value: "\(body.count)") }

        let sslContext: NIOSSLContext?
        if tls {
            var configuration = TLSConfiguration.makeClientConfiguration()
            if insecureTLS { configuration.certificateVerification = .none }
            if let trustRoots { configuration.trustRoots = .certificates(trustRoots) }
            if let clientCertificate {
                configuration.certificateChain = clientCertificate.chain.map { .certificate($0) }
                configuration.privateKey = .privateKey(clientCertificate.key)
            }
            sslContext = try NIOSSLContext(configuration: configuration)
        } else {
            sslContext = nil
        }
        let maxBodyBytes = self.maxBodyBytes
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        // SNI and name checks for names; none for an IP address.
                        let isAddress = (try? SocketAddress(ipAddress: host, port: 0)) != nil
                        let handler = try NIOSSLClientHandler(context: sslContext, serverHostname: isAddress ? nil : host)
                        try channel.pipeline.syncOperations.addHandler(handler)
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector(maxBodyBytes: maxBodyBytes))
                }
            }
            .connect(host: host, port: port).get()
        let promise = channel.eventLoop.makePromise(of: Response.self)
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: target, headers: requestHeaders)
        channel.eventLoop.execute {
            guard let collector = try? channel.pipeline.syncOperations.handler(type: ResponseCollector.self) else {
                promise.fail(Failure(description: "connection to \(host):\(port) closed"))
                return
            }
            collector.promise = promise
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        let deadline = channel.eventLoop.scheduleTask(in: timeout) {
            promise.fail(Failure(description: "\(method) \(url.absoluteString): no response within \(timeout.nanoseconds / 1_000_000_000) s"))
            channel.close(promise: nil)
        }
        defer {
            deadline.cancel()
            channel.close(promise: nil)
        }
        return try await promise.futureResult.get()
    }
}

/// Gathers one response; fails the promise on a connection error or an oversized body.
private final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart

    var promise: EventLoopPromise<HTTPClient.Response>?
    private var head: HTTPResponseHead?
    private var body: [UInt8] = []
    private let maxBodyBytes: Int

    init(maxBodyBytes: Int) {
        self.maxBodyBytes = maxBodyBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body(var buffer):
            if body.count + buffer.readableBytes > maxBodyBytes {
                fail(HTTPClient.Failure(description: "response body larger than \(maxBodyBytes) bytes"), context: context)
                return
            }
            body.append(contentsOf: buffer.readBytes(length: buffer.readableBytes) ?? [])
        case .end:
            if let head {
                promise?.succeed(HTTPClient.Response(status: Int(head.status.code), headers: head.headers, body: body))
                promise = nil
            }
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(error, context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(HTTPClient.Failure(description: "the server closed the connection before answering"), context: context)
        context.fireChannelInactive()
    }

    private func fail(_ error: any Error, context: ChannelHandlerContext) {
        promise?.fail(error)
        promise = nil
        context.close(promise: nil)
    }
}
