import Foundation
import Logging
import NIOCore
import SlipwayProtos
import SlipwayRPC
import SlipwayRPCServices
import SlipwayRPCTestSupport

// The Swift side of the interop suite (Tests/interop): `serve HOST:PORT` runs TestService with
// health and reflection for grpcio clients; `client HOST:PORT` runs every client scenario against a
// grpcio server implementing the same service and prints one line per scenario.

typealias Request = Slipway_Testing_V1_TestRequest
typealias Service = Slipway_Testing_V1_TestService

/// Prints a line unbuffered, so the driving test sees it at once.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

let arguments = CommandLine.arguments
guard arguments.count == 3, let colon = arguments[2].lastIndex(of: ":"), let port = Int(arguments[2][arguments[2].index(after: colon)...]) else {
    FileHandle.standardError.write(Data("usage: slipway-interop-peer serve|client HOST:PORT\n".utf8))
    exit(2)
}
let host = String(arguments[2][..<colon])

if arguments[1] == "serve" {
    var router = RPCRouter()
    router.register(TestService())
    _ = router.registerStandardServices()
    var logger = Logger(label: "interop-peer")
    logger.logLevel = .warning
    // Connection management and TLS are configurable for the suites that exercise them.
    let environment = ProcessInfo.processInfo.environment
    var timings = ConnectionTimings()
    if let value = environment["SLIPWAY_PEER_KEEPALIVE_SECONDS"].flatMap(Int64.init) { timings.keepaliveInterval = .seconds(value) }
    if let value = environment["SLIPWAY_PEER_KEEPALIVE_TIMEOUT_SECONDS"].flatMap(Int64.init) { timings.keepaliveTimeout = .seconds(value) }
    if let value = environment["SLIPWAY_PEER_IDLE_SECONDS"].flatMap(Int64.init) { timings.idleTimeout = .seconds(value) }
    var tls: RPCServer.TLS?
    if let certificate = environment["SLIPWAY_PEER_TLS_CERT"], let key = environment["SLIPWAY_PEER_TLS_KEY"] {
        tls = try RPCServer.TLS(certificatePath: certificate, keyPath: key, clientCAPath: environment["SLIPWAY_PEER_TLS_CLIENT_CA"])
    }
    let server = RPCServer(host: host, port: port, router: router, tls: tls, timings: timings, logger: logger)
    try await withThrowingDiscardingTaskGroup { group in
        group.addTask { try await server.run() }
        let address = try await server.listeningAddress
        say("listening \(address.port ?? 0)")
    }
    exit(0)
}

// MARK: client scenarios

let client = RPCClient(host: host, port: port)
var failures = 0

@MainActor func scenario(_ name: String, _ body: () async throws -> Void) async {
    do {
        try await body()
        say("ok \(name)")
    } catch {
        failures += 1
        say("FAIL \(name): \(error)")
    }
}

struct Mismatch: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw Mismatch(message()) }
}

@MainActor func expectStatus(_ code: RPCStatusCode, _ body: () async throws -> Void) async throws -> RPCError {
    do {
        try await body()
    } catch let error as RPCError {
        try expect(error.code == code, "expected \(code), got \(error)")
        return error
    }
    throw Mismatch("expected \(code), the call succeeded")
}

@Sendable func request(_ text: String, count: Int32 = 0, payload: [UInt8] = [], failCode: Int32 = 0, failMessage: String = "", delayMs: Int32 = 0) -> Request {
    var request = Request()
    request.text = text
    request.count = count
    request.payload = payload
    request.failCode = failCode
    request.failMessage = failMessage
    request.delayMs = delayMs
    return request
}

await scenario("unary") {
    let response = try await client.unary(Service.Unary.self, request("héllo", payload: [0, 1, 2, 255]))
    try expect(response.text == "héllo" && response.payload == [0, 1, 2, 255], "echo mismatch: \(response)")
}

await scenario("metadata") {
    let call = try await client.makeCall(path: Service.Unary.path, options: CallOptions(metadata: {
        var metadata: Metadata = ["x-echo": "from-swift"]
        metadata.add("x-echo-bin", binary: [0, 0xFF, 0x10])
        return metadata
    }()))
    try await call.requests(Request.self).write(request("m"))
    call.finishSending()
    var responses = call.responses(Slipway_Testing_V1_TestResponse.self).makeAsyncIterator()
    _ = try await responses.next()
    _ = try await responses.next()
    try expect(call.initialMetadata["x-echo"] == "from-swift", "initial metadata: \(call.initialMetadata)")
    try expect(call.initialMetadata.binary("x-echo-bin") == [0, 0xFF, 0x10], "binary metadata: \(call.initialMetadata)")
    try expect(call.trailingMetadata["x-echo-trailer"] == "from-swift", "trailing metadata: \(call.trailingMetadata)")
}

await scenario("server-streaming") {
    let indexes = try await client.serverStreaming(Service.ServerStream.self, request("s", count: 500)) { responses in
        var indexes: [Int32] = []
        for try await response in responses { indexes.append(response.index) }
        return indexes
    }
    try expect(indexes == Array(0..<500), "got \(indexes.count) responses")
}

await scenario("client-streaming") {
    let response = try await client.clientStreaming(Service.ClientStream.self) { writer in
        for i in 0..<100 { try await writer.write(request("c\(i)", payload: [UInt8](repeating: 1, count: 10))) }
    }
    try expect(response.index == 100 && String(decoding: response.payload, as: UTF8.self) == "1000", "got \(response)")
}

await scenario("bidirectional") {
    let texts = try await client.bidirectional(Service.Bidi.self, requests: { writer in
        for i in 0..<50 { try await writer.write(request("b\(i)")) }
    }, responses: { responses in
        var texts: [String] = []
        for try await response in responses { texts.append(response.text) }
        return texts
    })
    try expect(texts == (0..<50).map { "b\($0)" }, "got \(texts.count) responses")
}

await scenario("error-status") {
    let error = try await expectStatus(.notFound) {
        _ = try await client.unary(Service.Unary.self, request("e", failCode: 5, failMessage: "no such thing: ünïcode % 100"))
    }
    try expect(error.message == "no such thing: ünïcode % 100", "message: \(error.message)")
    try expect(error.metadata["x-fail"] == "yes", "trailing metadata: \(error.metadata)")
}

await scenario("deadline") {
    let start = ContinuousClock.now
    _ = try await expectStatus(.deadlineExceeded) {
        _ = try await client.unary(Service.Unary.self, request("d", delayMs: 5000), options: CallOptions(timeout: .milliseconds(200)))
    }
    try expect(ContinuousClock.now - start < .seconds(3), "took \(ContinuousClock.now - start)")
}

await scenario("cancellation") {
    let (first, firstArrived) = AsyncStream<Void>.makeStream()
    let task = Task {
        try await client.serverStreaming(Service.ServerStream.self, request("x", count: 1000, delayMs: 50)) { responses in
            for try await _ in responses { firstArrived.yield() }
        }
    }
    for await _ in first { break }  // the call is streaming: cancel it mid-way
    task.cancel()
    do {
        try await task.value
        throw Mismatch("the call finished although it was cancelled")
    } catch let error as RPCError {
        try expect(error.code == .cancelled, "got \(error)")
    }
}

await scenario("large-message") {
    let payload = [UInt8](repeating: 7, count: 4 * 1024 * 1024 - 64)
    let response = try await client.unary(Service.Unary.self, request("big", payload: payload))
    try expect(response.payload.count == payload.count, "payload \(response.payload.count)")
}

await scenario("message-over-limit") {
    // The peer answers with the request's payload: ours is refused before it leaves.
    _ = try await expectStatus(.resourceExhausted) {
        _ = try await client.unary(Service.Unary.self, request("too big", payload: [UInt8](repeating: 1, count: 5 * 1024 * 1024)))
    }
}

await scenario("concurrent-streams") {
    try await withThrowingTaskGroup(of: String.self) { group in
        for i in 0..<300 {
            group.addTask { try await client.unary(Service.Unary.self, request("c\(i)")).text }
        }
        var seen = Set<String>()
        for try await text in group { seen.insert(text) }
        try expect(seen.count == 300, "got \(seen.count) distinct responses")
    }
}

await scenario("unimplemented") {
    _ = try await expectStatus(.unimplemented) {
        _ = try await client.unary("/slipway.testing.v1.TestService/Nope", request: request("u"), responseType: Slipway_Testing_V1_TestResponse.self)
    }
}

await client.close()
say(failures == 0 ? "all scenarios passed" : "\(failures) scenarios failed")
exit(failures == 0 ? 0 : 1)
