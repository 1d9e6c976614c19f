import Foundation
import Logging
import NIOCore
import SlipwayProtos
import SlipwayRPCServices
import SlipwayRPCTestSupport
import Synchronization
import Testing

@testable import SlipwayRPC

typealias TestRequest = Slipway_Testing_V1_TestRequest
typealias TestService = Slipway_Testing_V1_TestService

func testRequest(_ text: String = "", count: Int32 = 0, payload: [UInt8] = [], failCode: Int32 = 0, delayMs: Int32 = 0) -> TestRequest {
    var request = TestRequest()
    request.text = text
    request.count = count
    request.payload = payload
    request.failCode = failCode
    request.delayMs = delayMs
    return request
}

/// Runs `body` against our server on a free port, with our client, then shuts the server down.
@discardableResult
func withServer<R: Sendable>(
    router: RPCRouter? = nil, tls: RPCServer.TLS? = nil, clientTLS: RPCClient.TLS? = nil, timings: ConnectionTimings = ConnectionTimings(),
    _ body: @Sendable (RPCClient, RPCServer) async throws -> R
) async throws -> R {
    let router = router ?? {
        var router = RPCRouter()
        router.register(SlipwayRPCTestSupport.TestService())
        _ = router.registerStandardServices()
        return router
    }()
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    let server = RPCServer(host: "127.0.0.1", port: 0, router: router, tls: tls, timings: timings, logger: logger)
    return try await withThrowingTaskGroup(of: R?.self) { group in
        group.addTask {
            try await server.run()
            return nil
        }
        let port = try await server.listeningAddress.port!
        let client = RPCClient(host: "127.0.0.1", port: port, tls: clientTLS)
        defer { server.shutdown() }
        let result = try await body(client, server)
        await client.close()
        server.shutdown()
        for try await value in group { if let value { return value } }
        return result
    }
}

@Suite struct ClientServerTests {
    @Test func unaryRoundTrip() async throws {
        try await withServer { client, _ in
            let response = try await client.unary(TestService.Unary.self, testRequest("hi", payload: [1, 2, 3]))
            #expect(response.text == "hi")
            #expect(response.payload == [1, 2, 3])
        }
    }

    @Test func serverStreamingDeliversEveryMessageInOrder() async throws {
        try await withServer { client, _ in
            let indexes = try await client.serverStreaming(TestService.ServerStream.self, testRequest(count: 2000)) { responses in
                var indexes: [Int32] = []
                for try await response in responses { indexes.append(response.index) }
                return indexes
            }
            #expect(indexes == Array(0..<2000))
        }
    }

    @Test func clientStreamingAndBidirectional() async throws {
        try await withServer { client, _ in
            let summary = try await client.clientStreaming(TestService.ClientStream.self) { writer in
                for i in 0..<300 { try await writer.write(testRequest("m\(i)", payload: [0, 1])) }
            }
            #expect(summary.index == 300)
            #expect(String(decoding: summary.payload, as: UTF8.self) == "600")

            let echoed = try await client.bidirectional(TestService.Bidi.self, requests: { writer in
                for i in 0..<100 { try await writer.write(testRequest("b\(i)")) }
            }, responses: { responses in
                var texts: [String] = []
                for try await response in responses { texts.append(response.text) }
                return texts
            })
            #expect(echoed == (0..<100).map { "b\($0)" })
        }
    }

    @Test func errorsCarryCodeMessageAndTrailers() async throws {
        try await withServer { client, _ in
            await #expect {
                _ = try await client.unary(TestService.Unary.self, testRequest(failCode: 7))
            } throws: { error in
                let error = error as! RPCError
                return error.code == .permissionDenied && error.metadata["x-fail"] == "yes"
            }
        }
    }

    @Test func deadlineEndsTheCallAndCancelsTheHandler() async throws {
        let service = SlipwayRPCTestSupport.TestService()
        var router = RPCRouter()
        router.register(service)
        try await withServer(router: router) { client, _ in
            let start = ContinuousClock.now
            await #expect {
                _ = try await client.unary(TestService.Unary.self, testRequest(delayMs: 30_000), options: CallOptions(timeout: .milliseconds(100)))
            } throws: { ($0 as? RPCError)?.code == .deadlineExceeded }
            #expect(ContinuousClock.now - start < .seconds(10))
            try await eventually { service.cancelledCount == 1 }
        }
    }

    @Test func cancellingTheTaskResetsTheStream() async throws {
        let service = SlipwayRPCTestSupport.TestService()
        var router = RPCRouter()
        router.register(service)
        try await withServer(router: router) { client, _ in
            let firstArrived = Atomic<Bool>(false)
            let call = Task {
                try await client.serverStreaming(TestService.ServerStream.self, testRequest(count: 10_000, delayMs: 20)) { responses in
                    for try await _ in responses { firstArrived.store(true, ordering: .relaxed) }
                }
            }
            try await eventually { firstArrived.load(ordering: .relaxed) }
            call.cancel()
            await #expect { try await call.value } throws: { ($0 as? RPCError)?.code == .cancelled }
            try await eventually { service.cancelledCount == 1 }
        }
    }

    @Test func callsShareOneConnection() async throws {
        let peers = Mutex<Set<String>>([])
        var router = RPCRouter()
        router.unary("/t.T/Peer", RawBytes.self, RawBytes.self) { request, context in
            peers.withLock { _ = $0.insert(context.peer) }
            return request
        }
        try await withServer(router: router) { client, _ in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<200 { group.addTask { _ = try await client.unary("/t.T/Peer", request: RawBytes([1]), responseType: RawBytes.self) } }
                try await group.waitForAll()
            }
        }
        #expect(peers.withLock { $0.count } == 1)
    }

    @Test func unknownMethodIsUnimplemented() async throws {
        try await withServer { client, _ in
            await #expect {
                _ = try await client.unary("/no.Such/Method", request: RawBytes(), responseType: RawBytes.self)
            } throws: { ($0 as? RPCError)?.code == .unimplemented }
        }
    }

    @Test func clientReconnectsAfterTheServerRestarts() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        var router = RPCRouter()
        router.unary("/t.T/Echo", RawBytes.self, RawBytes.self) { request, _ in request }
        // The port must still be free when the second server binds it. A port the kernel picks (port 0)
        // comes from the ephemeral range, where another test's outgoing connection may take it in
        // between; a port below that range (32768–60999 on Linux) is only taken by an explicit bind.
        var started: (server: RPCServer, run: Task<Void, any Error>, port: Int)?
        for candidate in (20_000..<32_000).shuffled().prefix(50) {
            let server = RPCServer(host: "127.0.0.1", port: candidate, router: router, logger: logger)
            let run = Task { try await server.run() }
            if (try? await server.listeningAddress) != nil {
                started = (server, run, candidate)
                break
            }
            _ = try? await run.value
        }
        let (first, firstRun, port) = try #require(started)
        let client = RPCClient(host: "127.0.0.1", port: port)
        #expect(try await client.unary("/t.T/Echo", request: RawBytes([1]), responseType: RawBytes.self).bytes == [1])
        first.shutdown()
        try await firstRun.value

        await #expect { _ = try await client.unary("/t.T/Echo", request: RawBytes([2]), responseType: RawBytes.self) } throws: {
            ($0 as? RPCError)?.code == .unavailable
        }
        // Bound again as soon as the kernel lets go of the port (CI has seen EADDRINUSE right after
        // the first server's sockets closed): retried until it binds, for at most 10 s.
        var restarted: (server: RPCServer, run: Task<Void, any Error>)?
        let deadline = ContinuousClock.now + .seconds(10)
        while restarted == nil {
            let server = RPCServer(host: "127.0.0.1", port: port, router: router, logger: logger)
            let run = Task { try await server.run() }
            do {
                _ = try await server.listeningAddress
                restarted = (server, run)
            } catch {
                _ = try? await run.value
                guard ContinuousClock.now < deadline else { throw error }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        let (second, secondRun) = try #require(restarted)
        #expect(try await client.unary("/t.T/Echo", request: RawBytes([3]), responseType: RawBytes.self).bytes == [3])
        await client.close()
        second.shutdown()
        try await secondRun.value
    }

    @Test func gracefulShutdownLetsInFlightCallsFinish() async throws {
        try await withServer { client, server in
            let received = Atomic<Int>(0)
            let stream = Task {
                try await client.serverStreaming(TestService.ServerStream.self, testRequest(count: 10, delayMs: 50)) { responses in
                    for try await _ in responses { received.add(1, ordering: .relaxed) }
                    return received.load(ordering: .relaxed)
                }
            }
            try await eventually { received.load(ordering: .relaxed) > 0 }  // the call is in flight
            server.shutdown()
            #expect(try await stream.value == 10)
            // The listener is gone: a new call cannot connect.
            let late = RPCClient(host: client.host, port: client.port)
            await #expect { _ = try await late.unary(TestService.Unary.self, testRequest()) } throws: { ($0 as? RPCError)?.code == .unavailable }
        }
    }

    @Test func shutdownCancelsCallsThatOutliveTheGracePeriod() async throws {
        var timings = ConnectionTimings()
        timings.shutdownGracePeriod = .milliseconds(200)
        try await withServer(timings: timings) { client, server in
            let received = Atomic<Int>(0)
            let stream = Task {
                try await client.serverStreaming(TestService.ServerStream.self, testRequest(count: 1000, delayMs: 50)) { responses in
                    for try await _ in responses { received.add(1, ordering: .relaxed) }
                }
            }
            try await eventually { received.load(ordering: .relaxed) > 0 }  // the call is in flight
            server.shutdown()
            await #expect { try await stream.value } throws: { ($0 as? RPCError)?.code == .unavailable }
        }
    }
}

/// Polls `condition` until it holds (a state change observed, not a fixed sleep), failing after 10 s.
func eventually(_ condition: @Sendable () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(10)
    while !condition() {
        if ContinuousClock.now > deadline {
            Issue.record("condition did not become true within 10 s")
            return
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}
