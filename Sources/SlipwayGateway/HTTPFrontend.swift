import Foundation
import Logging
import NIOCore
import NIOHTTP1
import SlipwayProtos
import SlipwayRPC

/// HTTP/1.1 on the gateway's port, beside gRPC:
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
            let closed = channel.closeFuture
            Task { await self.serve(connection, closed: closed) }
        }
    }

    struct Request: Sendable {
        var head: HTTPRequestHead
        var body: [UInt8]
        var tooLarge: Bool

        var path: String { String(head.uri.split(separator: "?", maxSplits: 1).first ?? "") }
        var query: [String: String] {
            guard let components = URLComponents(string: head.uri) else { return [:] }
            var query: [String: String] = [:]
            for item in components.queryItems ?? [] { query[item.name] = item.value ?? "" }
            return query
        }
    }

    func serve(_ connection: Connection, closed: EventLoopFuture<Void>) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                while let request = try await Self.readRequest(&iterator, limit: webhooks.maxBodyBytes) {
                    let keepAlive = request.head.isKeepAlive && !request.tooLarge
                    if request.head.method == .GET, request.path == "/v1/logs" || request.path == "/v1/events" {
                        try await stream(request, outbound: outbound, closed: closed)
                        return
                    }
                    let (status, object) = await respond(request)
                    try await Self.writeJSON(status, object, keepAlive: keepAlive, to: outbound)
                    if !keepAlive { return }
                }
            }
        } catch {
            logger.debug("HTTP/1.1 connection ended", metadata: ["error": "\(error)"])
        }
    }

    /// The next request with its body (at most `limit` bytes kept), nil when the client is done.
    static func readRequest(_ iterator: inout NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator, limit: Int) async throws -> Request? {
        var request: Request?
        while let part = try await iterator.next() {
            switch part {
            case .head(let head):
                request = Request(head: head, body: [], tooLarge: false)
            case .body(var buffer):
                guard request != nil else { continue }
                if request!.body.count + buffer.readableBytes > limit {
                    // Answered (413) and closed now, without reading the rest.
                    request!.tooLarge = true
                    request!.body = []
                    return request
                }
                request!.body += buffer.readBytes(length: buffer.readableBytes) ?? []
            case .end:
                return request
            }
        }
        return nil
    }

    func respond(_ request: Request) async -> (HTTPResponseStatus, [String: Any]) {
        let path = request.path
        if path == "/healthz" { return (.ok, ["status": "SERVING"]) }
        if path.hasPrefix("/webhooks/") {
            guard request.head.method == .POST else { return (.methodNotAllowed, Self.error("METHOD_NOT_ALLOWED", "webhooks are POSTed")) }
            let serviceID = String(path.dropFirst("/webhooks/".count))
            if request.tooLarge {
                let answer = webhooks.tooLarge(serviceID: serviceID)
                return (HTTPResponseStatus(statusCode: answer.status), answer.json)
            }
            var headers: [String: String] = [:]
            for (name, value) in request.head.headers { headers[name.lowercased()] = value }
            let answer = await webhooks.receive(serviceID: serviceID, WebhookRequest(headers: headers, body: request.body))
            return (HTTPResponseStatus(statusCode: answer.status), answer.json)
        }
        return (.notFound, Self.error("NOT_FOUND", "no such path \(path.prefix(200)): the gateway serves /webhooks/<service id>, /v1/logs, /v1/events and /healthz over HTTP/1.1; the rest of its API is gRPC"))
    }

    // MARK: Server-Sent Events

    typealias EventSource = @Sendable (@escaping @Sendable (String) async throws -> Void) async throws -> Void

    func stream(_ request: Request, outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, closed: EventLoopFuture<Void>) async throws {
        let release: @Sendable () -> Void
        let source: EventSource
        do {
            (release, source) = try await prepareStream(request)
        } catch {
            let failure = error as? RPCError ?? RPCError(.internal, "\(error)")
            try await Self.writeJSON(Self.status(failure.code), Self.error(failure.code, failure.message), keepAlive: false, to: outbound)
            return
        }
        defer { release() }
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "text/event-stream; charset=utf-8")
        headers.add(name: "cache-control", value: "no-cache")
        headers.add(name: "connection", value: "close")
        try await outbound.write(.head(HTTPResponseHead(version: request.head.version, status: .ok, headers: headers)))
        try await outbound.write(.body(.byteBuffer(ByteBuffer(string: ": slipway \(request.path)\n\n"))))
        // Ends when the source ends or fails (an `error` event says why), or the client goes.
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    try await source { text in try await outbound.write(.body(.byteBuffer(ByteBuffer(string: text)))) }
                } catch let error as RPCError {
                    try? await outbound.write(.body(.byteBuffer(ByteBuffer(string: ServerSentEvents.error(error)))))
                }
            }
            group.addTask { try await closed.get() }
            // A comment every 15 s: proxies keep the stream open, and a client that vanished
            // without closing is found by the failed write.
            group.addTask {
                while true {
                    try await Task.sleep(for: Self.heartbeat)
                    try await outbound.write(.body(.byteBuffer(ByteBuffer(string: ": ping\n\n"))))
                }
            }
            _ = try await group.next()
            group.cancelAll()
        }
        try? await outbound.write(.end(nil))
    }

    /// Authenticates an event stream's request and opens what it reads from.
    func prepareStream(_ request: Request) async throws -> (@Sendable () -> Void, EventSource) {
        let query = request.query
        let header = request.head.headers.first(name: "authorization") ?? query["access_token"].map { "Bearer \($0)" }
        let principal = try service.auth.authenticate(bearer: header)
        try service.auth.admit(principal)
        let source: EventSource
        if request.path == "/v1/logs" {
            let logsRequest = try Self.logsRequest(query, lastEventID: request.head.headers.first(name: "last-event-id"))
            let tail = try await service.tailRequest(logsRequest, principal)
            let merged = (tail.stream?.deploymentId.isEmpty ?? true) && (tail.stream?.serviceId.isEmpty ?? true)
            let logs = service.logs
            source = { emit in
                try await logs.serverStreaming(Slipway_Logs_V1_Logs.Tail.self, tail) { responses in
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
                try await pipeline.serverStreaming(Slipway_Pipeline_V1_Pipeline.Watch.self, request) { events in
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

    static func status(_ code: RPCStatusCode) -> HTTPResponseStatus {
        switch code {
        case .invalidArgument, .outOfRange: .badRequest
        case .unauthenticated: .unauthorized
        case .permissionDenied: .forbidden
        case .notFound: .notFound
        case .alreadyExists, .aborted: .conflict
        case .failedPrecondition: .preconditionFailed
        case .resourceExhausted: .tooManyRequests
        case .unavailable: .serviceUnavailable
        case .deadlineExceeded: .gatewayTimeout
        case .unimplemented: .notImplemented
        default: .internalServerError
        }
    }

    static func writeJSON(_ status: HTTPResponseStatus, _ object: [String: Any], keepAlive: Bool, to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        var body = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        body.append(0x0a)
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.count))
        headers.add(name: "connection", value: keepAlive ? "keep-alive" : "close")
        try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)))
        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
        try await outbound.write(.end(nil))
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
