import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// A minimal HTTP/1.1 server on a loopback port: one request per connection, answered by a closure.
/// It stands in for the load balancer that serves HTTP-01 responses to pebble, for a misbehaving
/// ACME server in the retry tests, and for a Kubernetes API server replaying recorded answers.
/// Every request is recorded.
public final class TinyHTTPServer: Sendable {
    public struct Request: Sendable {
        public var method: String
        public var path: String
        /// Header names lowercased.
        public var headers: [String: String]
        public var body: [UInt8]
    }

    public struct Reply: Sendable {
        public var status: Int
        public var headers: [(String, String)] = []
        public var body: [UInt8] = []

        public init(status: Int, headers: [(String, String)] = [], body: [UInt8] = []) {
            self.status = status
            self.headers = headers
            self.body = body
        }

        public static func text(_ status: Int, _ text: String, headers: [(String, String)] = []) -> Reply {
            Reply(status: status, headers: headers, body: Array(text.utf8))
        }
    }

    public typealias Handler = @Sendable (Request) -> Reply

    public let port: Int
    private let channel: any Channel
    private let log: RequestLog

    private init(port: Int, channel: any Channel, log: RequestLog) {
        self.port = port
        self.channel = channel
        self.log = log
    }

    /// Every request so far, in arrival order.
    public var requests: [Request] { log.requests.withLock { $0 } }

    /// Binds a random port in 20000..<32000 (below the ephemeral range, so no outgoing connection holds it).
    public static func start(_ handler: @escaping Handler) async throws -> TinyHTTPServer {
        let log = RequestLog()
        var lastError: (any Error)?
        for _ in 0..<20 {
            let port = Int.random(in: 20000..<32000)
            do {
                let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .childChannelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(RequestHandler(handler: handler, log: log))
                        }
                    }
                    .bind(host: "127.0.0.1", port: port).get()
                return TinyHTTPServer(port: port, channel: channel, log: log)
            } catch {
                lastError = error
            }
        }
        throw TestFailure("no free port for the test HTTP server: \(lastError.map { "\($0)" } ?? "")")
    }

    public func stop() async {
        try? await channel.close()
    }
}

private final class RequestLog: Sendable {
    let requests = Mutex<[TinyHTTPServer.Request]>([])
}

/// Reads one request (head and Content-Length body), answers it, closes the connection.
private final class RequestHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let handler: TinyHTTPServer.Handler
    private let log: RequestLog
    private var received: [UInt8] = []
    private var answered = false

    init(handler: @escaping TinyHTTPServer.Handler, log: RequestLog) {
        self.handler = handler
        self.log = log
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        received += buffer.readBytes(length: buffer.readableBytes) ?? []
        guard !answered, let request = parse() else { return }
        answered = true
        log.requests.withLock { $0.append(request) }
        let reply = handler(request)
        var head = "HTTP/1.1 \(reply.status) \(reply.status < 400 ? "OK" : "Error")\r\n"
        for (name, value) in reply.headers { head += "\(name): \(value)\r\n" }
        head += "Content-Length: \(reply.body.count)\r\nConnection: close\r\n\r\n"
        var out = context.channel.allocator.buffer(capacity: head.utf8.count + reply.body.count)
        out.writeString(head)
        if request.method != "HEAD" { out.writeBytes(reply.body) }
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(out)).whenComplete { _ in bound.value.close(promise: nil) }
    }

    private func parse() -> TinyHTTPServer.Request? {
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        guard let end = received.indices.dropLast(3).first(where: { received[$0..<$0 + 4].elementsEqual(separator) }) else { return nil }
        let lines = String(decoding: received[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let requestLine = lines[0].split(separator: " ")
        guard requestLine.count >= 2 else { return nil }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let length = Int(headers["content-length"] ?? "0") ?? 0
        let bodyStart = end + 4
        guard received.count - bodyStart >= length else { return nil }
        return TinyHTTPServer.Request(
            method: String(requestLine[0]),
            path: String(requestLine[1]),
            headers: headers,
            body: Array(received[bodyStart..<bodyStart + length])
        )
    }
}
