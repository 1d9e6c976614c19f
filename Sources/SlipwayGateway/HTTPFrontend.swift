import Foundation
import Logging
import NIOCore
import NIOHTTP1
import SlipwayProtos
import SlipwayRPC
import Synchronization

/// Plain HTTP on the gateway's port, beside gRPC: HTTP/1.1, and HTTP/2 requests that are not gRPC
/// (what browsers and curl send once TLS's ALPN picked h2).
///
/// - `POST /webhooks/<service id>`: git hosts' push deliveries (``WebhookReceiver``).
/// - `GET /v1/logs?deployment_id=|service_id=|environment_id=…`: log lines as Server-Sent Events,
///   with the gRPC `TailLogs` cursors (`after_seq`, `since_nanos`, `live_only`; `Last-Event-ID`
///   resumes) and filters (`contains`, `min_level`, `instance_id`, `filter_service_id`).
/// - `GET /v1/events?environment_id=…[&deployment_id=…]`: the status `Watch` stream as events.
/// - `GET /healthz`.
///
/// Event streams take the same API tokens: `Authorization: Bearer …`, or `access_token=` in the
/// query for clients that cannot set headers (EventSource).
struct HTTPFrontend: Sendable {
    let service: GatewayService
    let webhooks: WebhookReceiver
    /// Refused requests per client address (unauthenticated webhooks and event streams).
    let failures: SourceLimiter
    let logger: Logger

    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    /// How long an HTTP/1.1 connection may stay silent both ways.
    static let idleTimeout = TimeAmount.seconds(60)

    /// How often an idle event stream sends a comment.
    static let heartbeat = Duration.seconds(15)

    /// Installs HTTP/1.1 on a connection the sniffer found to be HTTP/1.1.
    var initializer: HTTP1Initializer {
        { channel in
            // Nothing read or written for a minute: closed (event streams write a heartbeat every 15 s).
            try channel.pipeline.syncOperations.addHandlers(IdleStateHandler(allTimeout: Self.idleTimeout), CloseWhenIdle())
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: true)
            let connection = try Connection(wrappingChannelSynchronously: channel)
            return { await self.serve(connection) }
        }
    }

    /// Plain HTTP/2 requests (the gRPC server hands over what is not gRPC).
    var plainHandler: PlainHTTPHandler {
        { request, writer in try await self.handle(request, writer) }
    }

    // MARK: HTTP/1.1

    func serve(_ connection: Connection) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                let remote = connection.channel.remoteAddress?.ipAddress
                while let (head, received) = try await Self.readRequest(&iterator, limit: webhooks.maxBodyBytes) {
                    var request = received
                    request.remoteAddress = remote
                    let response = HTTP1Response(outbound: outbound, version: head.version, closing: request.bodyTooLarge)
                    try await handle(request, response.writer)
                    try await response.sendHead()
                    try await outbound.write(.end(nil))
                    if request.bodyTooLarge {
                        // The client may still be sending: read and drop what follows (never kept),
                        // up to four times the limit, so that closing does not reset the
                        // connection before the client has read the 413.
                        var drained = 0
                        while drained < 4 * webhooks.maxBodyBytes, let part = try await iterator.next() {
                            guard case .body(let buffer) = part else { break }
                            drained += buffer.readableBytes
                        }
                        return
                    }
                    // Event streams and clients that asked end the connection.
                    guard head.isKeepAlive, response.hadLength else { return }
                }
            }
        } catch {
            logger.debug("HTTP/1.1 connection ended", metadata: ["error": "\(error)"])
        }
    }

    /// Writes an HTTP/1.1 response head when the first body bytes (or the end) come.
    final class HTTP1Response: Sendable {
        let outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
        let version: HTTPVersion
        /// The connection ends after this response (`connection: close`).
        let closing: Bool
        private let state = Mutex<(head: (Int, [(String, String)])?, sent: Bool, length: Bool)>((nil, false, false))

        init(outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, version: HTTPVersion, closing: Bool = false) {
            self.outbound = outbound
            self.version = version
            self.closing = closing
        }

        var hadLength: Bool { state.withLock { $0.length } }

        var writer: PlainHTTPResponseWriter {
            PlainHTTPResponseWriter(
                start: { status, headers in self.state.withLock { if $0.head == nil { $0.head = (status, headers) } } },
                write: { bytes in
                    try await self.sendHead()
                    try await self.outbound.write(.body(.byteBuffer(ByteBuffer(bytes: bytes))))
                })
        }

        /// Sends the head unless it went already (callers write one at a time: the event stream
        /// writes its first line before its tasks start).
        func sendHead() async throws {
            let head = state.withLock { state -> (Int, [(String, String)])? in
                guard !state.sent else { return nil }
                state.sent = true
                let head = state.head ?? (200, [("content-length", "0")])
                state.length = head.1.contains { $0.0 == "content-length" }
                return head
            }
            guard let (status, headers) = head else { return }
            var fields = HTTPHeaders(headers)
            fields.replaceOrAdd(name: "connection", value: fields.contains(name: "content-length") && !closing ? "keep-alive" : "close")
            try await outbound.write(.head(HTTPResponseHead(version: version, status: .init(statusCode: status), headers: fields)))
        }
    }

    /// The next request with its body (at most `limit` bytes; beyond, `bodyTooLarge` and the rest
    /// is not read), nil when the client is done.
    static func readRequest(
        _ iterator: inout NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator, limit: Int
    ) async throws -> (HTTPRequestHead, PlainHTTPRequest)? {
        var head: HTTPRequestHead?
        var request: PlainHTTPRequest?
        while let part = try await iterator.next() {
            switch part {
            case .head(let value):
                head = value
                request = PlainHTTPRequest(
                    method: value.method.rawValue, target: value.uri, headers: value.headers.map { ($0.name.lowercased(), $0.value) }, body: [])
                // Announced over the limit: refused before a byte of the body is read.
                if let length = value.headers.first(name: "content-length").flatMap(Int.init), length > limit {
                    request!.bodyTooLarge = true
                    return (value, request!)
                }
            case .body(var buffer):
                guard request != nil, let head else { continue }
                if request!.body.count + buffer.readableBytes > limit {
                    // Answered (413) and closed now, without reading the rest.
                    request!.bodyTooLarge = true
                    request!.body = []
                    return (head, request!)
                }
                request!.body += buffer.readBytes(length: buffer.readableBytes) ?? []
            case .end:
                if let head, let request { return (head, request) }
            }
        }
        return nil
    }

    // MARK: Requests

    static func path(_ request: PlainHTTPRequest) -> String { String(request.target.split(separator: "?", maxSplits: 1).first ?? "") }

    static func query(_ request: PlainHTTPRequest) -> [String: String] {
        guard let components = URLComponents(string: request.target) else { return [:] }
        var query: [String: String] = [:]
        for item in components.queryItems ?? [] { query[item.name] = item.value ?? "" }
        return query
    }

    /// One request, over either protocol.
    func handle(_ request: PlainHTTPRequest, _ writer: PlainHTTPResponseWriter) async throws {
        let path = Self.path(request)
        if request.method == "GET", path == "/v1/logs" || path == "/v1/events" {
            return try await stream(request, writer)
        }
        let (status, object) = await respond(request)
        if request.method == "HEAD" {
            // The head a GET would have, without its body.
            return writer.start(status: status, headers: [("content-type", "application/json")])
        }
        try await Self.writeJSON(status, object, to: writer)
    }

    func respond(_ request: PlainHTTPRequest) async -> (Int, [String: Any]) {
        let path = Self.path(request)
        if path == "/healthz" { return (200, ["status": "SERVING"]) }
        if path.hasPrefix("/webhooks/") {
            guard request.method == "POST" else { return (405, Self.error("METHOD_NOT_ALLOWED", "webhooks are POSTed")) }
            // A source whose deliveries keep failing verification gets 429 for the next ones that
            // fail, and they are no longer written down; a verified delivery from it (a git host's
            // address is shared by all its users) still goes through.
            let throttled = failures.wait(request.remoteAddress)
            let serviceID = String(path.dropFirst("/webhooks/".count))
            let answer = request.bodyTooLarge
                ? webhooks.tooLarge(serviceID: serviceID)
                : await webhooks.receive(
                    serviceID: serviceID, WebhookRequest(headers: Dictionary(request.headers, uniquingKeysWith: { first, _ in first }), body: request.body),
                    throttled: throttled.map { "too many refused deliveries from \(request.remoteAddress ?? "this address"); retry in \($0) s" })
            if [400, 401, 404, 413, 429].contains(answer.status) { failures.charge(request.remoteAddress) }
            return (answer.status, answer.json)
        }
        return (404, Self.error("NOT_FOUND", "no such path \(path.prefix(200)): the gateway serves /webhooks/<service id>, /v1/logs, /v1/events and /healthz over HTTP; the rest of its API is gRPC"))
    }

    // MARK: Server-Sent Events

    typealias EventSource = @Sendable (@escaping @Sendable (String) async throws -> Void) async throws -> Void

    /// Streams events until the source ends or fails (an `error` event says why) or the client
    /// goes (a write fails, at the latest at the next heartbeat; on HTTP/2 the stream's reset
    /// cancels this task).
    func stream(_ request: PlainHTTPRequest, _ writer: PlainHTTPResponseWriter) async throws {
        let release: @Sendable () -> Void
        let source: EventSource
        do {
            (release, source) = try await prepareStream(request)
        } catch {
            var failure = error as? RPCError ?? RPCError(.internal, "\(error)")
            if failure.code == .unauthenticated {
                // As for webhooks: a right token always gets through; a source that keeps failing
                // is told to back off.
                if let wait = failures.wait(request.remoteAddress) {
                    failure = RPCError(.resourceExhausted, "\(failure.message); too many unauthenticated requests from \(request.remoteAddress ?? "this address"), retry in \(wait) s")
                }
                failures.charge(request.remoteAddress)
            }
            try await Self.writeJSON(Self.status(failure.code), Self.error(failure.code, failure.message), to: writer)
            return
        }
        defer { release() }
        writer.start(status: 200, headers: [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")])
        try await writer.write(Array(": slipway \(Self.path(request))\n\n".utf8))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    try await source { text in try await writer.write(Array(text.utf8)) }
                } catch let error as RPCError {
                    try? await writer.write(Array(ServerSentEvents.error(error).utf8))
                }
            }
            // A comment every 15 s: proxies keep the stream open, and a client that vanished
            // without closing is found by the failed write.
            group.addTask {
                while true {
                    try await Task.sleep(for: Self.heartbeat)
                    try await writer.write(Array(": ping\n\n".utf8))
                }
            }
            _ = try await group.next()
            group.cancelAll()
        }
    }

    /// Authenticates an event stream's request and opens what it reads from.
    func prepareStream(_ request: PlainHTTPRequest) async throws -> (@Sendable () -> Void, EventSource) {
        let query = Self.query(request)
        let header = request.header("authorization") ?? query["access_token"].map { "Bearer \($0)" }
        let principal = try service.auth.authenticate(bearer: header)
        try service.auth.admit(principal)
        let source: EventSource
        if Self.path(request) == "/v1/logs" {
            let logsRequest = try Self.logsRequest(query, lastEventID: request.header("last-event-id"))
            let tail = try await service.tailRequest(logsRequest, principal)
            let merged = (tail.stream?.deploymentId.isEmpty ?? true) && (tail.stream?.serviceId.isEmpty ?? true)
            let logs = service.logs
            source = { emit in
                try await logs.tail(tail) { responses in
                    for try await response in responses { try await emit(ServerSentEvents.event(response, idByTimestamp: merged)) }
                }
            }
        } else {
            var watch = Slipway_Pipeline_V1_WatchRequest()
            watch.environmentId = query["environment_id"] ?? ""
            watch.deploymentId = query["deployment_id"] ?? ""
            _ = try await service.ownership.environment(watch.environmentId, for: principal)
            if !watch.deploymentId.isEmpty { _ = try await service.ownership.deployment(watch.deploymentId, for: principal) }
            let pipeline = service.pipeline
            let request = watch
            source = { emit in
                try await pipeline.watch(request) { events in
                    for try await event in events { try await emit(ServerSentEvents.event(event)) }
                }
            }
        }
        return (try service.auth.openStream(principal), source)
    }

    static func logsRequest(_ query: [String: String], lastEventID: String?) throws(RPCError) -> Slipway_Api_V1_LogsRequest {
        var request = Slipway_Api_V1_LogsRequest()
        request.deploymentId = query["deployment_id"] ?? ""
        request.serviceId = query["service_id"] ?? ""
        request.environmentId = query["environment_id"] ?? ""
        func number<T: FixedWidthInteger>(_ name: String, _ value: String) throws(RPCError) -> T {
            guard let parsed = T(value) else { throw RPCError(.invalidArgument, "\(name) must be a whole number, got \"\(value.prefix(40))\"") }
            return parsed
        }
        let mergedByTime = request.deploymentId.isEmpty && request.serviceId.isEmpty
        if let id = lastEventID ?? query["last_event_id"], !id.isEmpty {
            // Event ids are sequence numbers (one stream) or timestamps (an environment's merged streams).
            if mergedByTime {
                let nanos: Int64 = try number("Last-Event-ID", id)
                guard nanos < Int64.max else { throw RPCError(.invalidArgument, "Last-Event-ID \(id) is past the last possible timestamp") }
                request.start = .sinceNanos(nanos + 1)
            } else {
                request.start = .afterSeq(try number("Last-Event-ID", id))
            }
        } else if let value = query["after_seq"] {
            request.start = .afterSeq(try number("after_seq", value))
        } else if let value = query["since_nanos"] {
            request.start = .sinceNanos(try number("since_nanos", value))
        } else if query["live_only"] == "true" || query["live_only"] == "1" {
            request.start = .liveOnly(true)
        }
        var filter = Slipway_Logs_V1_Filter()
        filter.contains = query["contains"] ?? ""
        filter.instanceId = query["instance_id"] ?? ""
        filter.serviceId = query["filter_service_id"] ?? ""
        if let level = query["min_level"] {
            let levels: [String: Slipway_Logs_V1_Level] = ["trace": .trace, "debug": .debug, "info": .info, "warn": .warn, "error": .error]
            guard let parsed = levels[level.lowercased()] else { throw RPCError(.invalidArgument, "min_level must be trace, debug, info, warn or error") }
            filter.minLevel = parsed
        }
        request.filter = filter
        return request
    }

    // MARK: Responses

    static func error(_ code: String, _ message: String) -> [String: Any] {
        ["error": ["code": code, "message": message]]
    }

    static func error(_ code: RPCStatusCode, _ message: String) -> [String: Any] {
        error(ServerSentEvents.name(code), message)
    }

    static func status(_ code: RPCStatusCode) -> Int {
        switch code {
        case .invalidArgument, .outOfRange: 400
        case .unauthenticated: 401
        case .permissionDenied: 403
        case .notFound: 404
        case .alreadyExists, .aborted: 409
        case .failedPrecondition: 412
        case .resourceExhausted: 429
        case .unavailable: 503
        case .deadlineExceeded: 504
        case .unimplemented: 501
        default: 500
        }
    }

    static func writeJSON(_ status: Int, _ object: [String: Any], to writer: PlainHTTPResponseWriter) async throws {
        var body = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        body.append(0x0a)
        writer.start(status: status, headers: [("content-type", "application/json"), ("content-length", String(body.count))])
        try await writer.write(Array(body))
    }
}

/// Closes the connection when ``IdleStateHandler`` says it has been silent too long.
final class CloseWhenIdle: ChannelInboundHandler {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
