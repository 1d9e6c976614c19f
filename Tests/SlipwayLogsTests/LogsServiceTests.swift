import Foundation
import Logging
import SlipwayProtos
import SlipwayRPC
import Synchronization
import Testing

@testable import SlipwayLogs

/// The logs API end to end through our own RPC client and server (the grpcio suites cover a foreign client).
@Suite struct LogsServiceTests {
    typealias API = Slipway_Logs_V1_Logs

    func withLogsServer(_ body: @Sendable (RPCClient) async throws -> Void) async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let store = try store(temporaryDirectory())
        var router = RPCRouter()
        router.register(LogsService(store: store, logger: logger))
        let server = RPCServer(host: "127.0.0.1", port: 0, router: router, logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            let client = RPCClient(host: "127.0.0.1", port: try await server.listeningAddress.port!)
            do {
                try await body(client)
            } catch {
                server.shutdown()
                throw error
            }
            await client.close()
            server.shutdown()
            try await group.waitForAll()
        }
    }

    static let key: Slipway_Logs_V1_StreamKey = {
        var key = Slipway_Logs_V1_StreamKey()
        key.environmentId = "prod"
        key.serviceId = "web"
        return key
    }()

    static func batch(_ id: UInt64, _ texts: [String]) -> Slipway_Logs_V1_AppendRequest {
        var request = Slipway_Logs_V1_AppendRequest()
        request.batchId = id
        request.lines = texts.map { text in
            var line = Slipway_Logs_V1_LogLine()
            line.stream = Self.key
            line.text = text
            line.level = .info
            return line
        }
        return request
    }

    @Test func appendAcknowledgesInOrderAndTailGoesFromBacklogToLive() async throws {
        try await withLogsServer { client in
            // Producer: three batches over one Append stream, acknowledged in order.
            let acks = try await client.bidirectional(API.Append.self, requests: { writer in
                for i in 0..<3 { try await writer.write(Self.batch(UInt64(i), (0..<10).map { "b\(i)-\($0)" })) }
            }, responses: { responses in
                var acks: [(UInt64, UInt64, UInt64)] = []
                for try await ack in responses { acks.append((ack.batchId, ack.ranges[0].firstSeq, ack.ranges[0].lastSeq)) }
                return acks
            })
            #expect(acks.map(\.0) == [0, 1, 2])
            #expect(acks.map(\.1) == [1, 11, 21])
            #expect(acks.map(\.2) == [10, 20, 30])

            // Reader: the 30 lines of backlog, then 20 live ones appended while it reads.
            var request = Slipway_Logs_V1_TailRequest()
            request.stream = Self.key
            request.start = .afterSeq(0)
            let seen = Mutex<[UInt64]>([])
            let tail = Task {
                try await client.serverStreaming(API.Tail.self, request) { responses in
                    for try await response in responses {
                        guard case .line(let line)? = response.item else { continue }
                        let count = seen.withLock { seen in
                            seen.append(line.seq)
                            return seen.count
                        }
                        if count == 50 { return }
                    }
                }
            }
            try await waitUntil { seen.withLock { $0.count } >= 30 }
            _ = try await client.bidirectional(API.Append.self, requests: { writer in
                for i in 3..<5 { try await writer.write(Self.batch(UInt64(i), (0..<10).map { "b\(i)-\($0)" })) }
            }, responses: { responses in
                for try await _ in responses {}
            })
            try await tail.value
            #expect(seen.withLock { $0 } == Array(1...50))
        }
    }

    @Test func badInputGetsInvalidArgumentAndTheServiceStaysUp() async throws {
        try await withLogsServer { client in
            await #expect {
                try await client.bidirectional(API.Append.self, requests: { writer in
                    try await writer.write(Self.batch(7, []))
                }, responses: { responses in
                    for try await _ in responses {}
                })
            } throws: { error in
                let error = error as? RPCError
                return error?.code == .invalidArgument && error?.message == "batch 7 has no lines"
            }
            var query = Slipway_Logs_V1_QueryRequest()
            query.stream = Self.key
            query.pageSize = 5000
            await #expect { _ = try await client.unary(API.Query.self, query) } throws: { ($0 as? RPCError)?.code == .invalidArgument }
            let listed = try await client.unary(API.ListStreams.self, Slipway_Logs_V1_ListStreamsRequest())
            #expect(listed.streams.isEmpty)
        }
    }
}

/// Polls until `condition` holds (failing after 10 s).
func waitUntil(_ condition: @Sendable () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(10)
    while !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("condition not met within 10 s")
            return
        }
        try await Task.sleep(for: .milliseconds(5))
    }
}
