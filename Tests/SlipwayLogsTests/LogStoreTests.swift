import Foundation
import Logging
import SlipwayProtos
import SlipwayRPC
import Testing

@testable import SlipwayLogs

func temporaryDirectory() -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-logs-\(UUID().uuidString)").path
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func line(_ text: String, _ id: StreamID, level: Slipway_Logs_V1_Level = .info) -> (StreamID, Slipway_Logs_V1_LogLine) {
    var line = Slipway_Logs_V1_LogLine()
    line.text = text
    line.level = level
    return (id, line)
}

let web = StreamID(uncheckedKind: .application, environment: "prod", name: "web")
let deploy = StreamID(uncheckedKind: .deployment, environment: "prod", name: "dep-1")

func store(_ directory: String, segmentBytes: Int = 1 << 20, window: Int = 64) throws -> LogStore {
    var configuration = LogsConfiguration()
    configuration.segmentBytes = segmentBytes
    configuration.windowLines = window
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    return try LogStore(directory: directory, configuration: configuration, logger: logger)
}

/// Everything a reader gets from the start of a stream, through the public reading path.
func readAll(_ store: LogStore, _ id: StreamID) async throws -> [Slipway_Logs_V1_LogLine] {
    let reader = LogReader(store: store, stream: store.stream(id))
    var cursor: UInt64 = 0
    var lines: [Slipway_Logs_V1_LogLine] = []
    while true {
        switch try await reader.next(after: cursor, limit: 100) {
        case .entries(let entries):
            lines += entries.map(\.line)
            cursor = entries.last!.seq
        case .dropped(_, let last): cursor = last
        case .caughtUp: return lines
        }
    }
}

@Suite struct LogStoreTests {
    @Test func sequenceNumbersArePerStreamAndStrictlyIncreasing() async throws {
        let store = try store(temporaryDirectory())
        let ranges = try await store.append([line("a", web), line("b", deploy), line("c", web)])
        #expect(ranges.map { [$0.firstSeq, $0.lastSeq] } == [[1, 2], [1, 1]])
        let again = try await store.append([line("d", web)])
        #expect(again[0].firstSeq == 3)
        let lines = try await readAll(store, web)
        #expect(lines.map(\.text) == ["a", "c", "d"])
        #expect(lines.map(\.seq) == [1, 2, 3])
        #expect(zip(lines, lines.dropFirst()).allSatisfy { $0.timestampNanos < $1.timestampNanos })
    }

    @Test func readsFromDiskWhenTheWindowNoLongerCoversTheCursor() async throws {
        let store = try store(temporaryDirectory(), segmentBytes: 2048, window: 10)
        for batch in 0..<20 {
            _ = try await store.append((0..<25).map { line("line \(batch * 25 + $0)", web) })
        }
        #expect(store.stream(web).segments.count > 5)  // rolled into many segments
        let lines = try await readAll(store, web)
        #expect(lines.map(\.text) == (0..<500).map { "line \($0)" })
    }

    @Test func recoversAfterRestartAndCutsATornTail() async throws {
        let directory = temporaryDirectory()
        do {
            let first = try store(directory, segmentBytes: 4096)
            for i in 0..<10 { _ = try await first.append([line("before \(i)", web), line("deploy \(i)", deploy)]) }
            first.closeFiles()
        }
        // A crash in the middle of a write leaves half a record at the end of the active segment.
        let active = try store(directory, segmentBytes: 4096).stream(web).segments.last!.path
        let handle = FileHandle(forWritingAtPath: active)!
        handle.seekToEndOfFile()
        handle.write(Data([0, 0, 0, 200, 1, 2, 3, 4, 5]))
        handle.closeFile()

        let reopened = try store(directory, segmentBytes: 4096)
        #expect(reopened.stream(web).lastSeq == 10)
        let next = try await reopened.append([line("after", web)])
        #expect(next[0].firstSeq == 11)
        let lines = try await readAll(reopened, web)
        #expect(lines.map(\.text) == (0..<10).map { "before \($0)" } + ["after"])
        #expect(try await readAll(reopened, deploy).count == 10)
    }

    @Test func aCorruptRecordInsideASegmentCostsOnlyItsOwnLineAndIsReported() async throws {
        let directory = temporaryDirectory()
        do {
            let first = try store(directory, segmentBytes: 1 << 20)
            for i in 0..<20 { _ = try await first.append([line("line \(i)", web)]) }
            first.closeFiles()
        }
        // A flipped byte inside line 6's record (in its text): its CRC no longer matches.
        let path = try store(directory, segmentBytes: 1 << 20).stream(web).segments.last!.path
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let needle = Data("line 5".utf8)
        let at = try #require(bytes.range(of: needle)).lowerBound
        bytes[at] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: path))

        let reopened = try store(directory, segmentBytes: 1 << 20)
        #expect(reopened.stream(web).lastSeq == 20)
        let lines = try await readAll(reopened, web)
        #expect(lines.map(\.seq) == Array(1...20))
        #expect(lines[5].text.contains("corrupt on disk") && lines[5].level == .warn && lines[5].source == .system)
        #expect(lines.filter { $0.text.hasPrefix("line ") }.map(\.text) == (0..<20).filter { $0 != 5 }.map { "line \($0)" })
        // Appending goes on after it, and a second recovery finds a clean file.
        #expect(try await reopened.append([line("after", web)])[0].firstSeq == 21)
        reopened.closeFiles()
        let again = try await readAll(try store(directory, segmentBytes: 1 << 20), web)
        #expect(again.count == 21 && again[5].text.contains("corrupt on disk"))
    }

    @Test func aTornEarlierSegmentKeepsTheLaterOnesAndMarksTheGap() async throws {
        let directory = temporaryDirectory()
        do {
            let first = try store(directory, segmentBytes: 512)
            for i in 0..<40 { _ = try await first.append([line("line \(i)", web)]) }
            first.closeFiles()
        }
        let segments = try store(directory, segmentBytes: 512).stream(web).segments
        #expect(segments.count >= 3)
        // The first segment loses its last 5 bytes (a torn record), the later segments are intact.
        let torn = segments[0].path
        truncate(torn, off_t(FileIO.fileSize(torn) - 5))
        let reopened = try store(directory, segmentBytes: 512)
        let lines = try await readAll(reopened, web)
        #expect(lines.map(\.seq) == Array(1...40))
        let lost = lines.filter { $0.text.contains("corrupt on disk") }
        #expect(lost.map(\.seq) == [segments[0].lastSeq])
        #expect(lines.last?.text == "line 39")
    }

    @Test func retentionRemovesOldSegmentsAndReadersSeeTheGap() async throws {
        let store = try store(temporaryDirectory(), segmentBytes: 1024, window: 5)
        for i in 0..<100 { _ = try await store.append([line("line \(i)", web)]) }
        let stream = store.stream(web)
        let before = stream.segments.count
        let removed = try await store.removeSegments(stream) { $0.lastSeq < 50 }
        #expect(removed.segments > 0)
        #expect(stream.segments.count == before - removed.segments)
        let reader = LogReader(store: store, stream: stream)
        guard case .dropped(let first, let last) = try await reader.next(after: 0, limit: 10) else {
            Issue.record("a reader behind retention gets a dropped marker")
            return
        }
        #expect(first == 1)
        #expect(last == stream.firstRetained - 1)
        let rest = try await readAll(store, web)
        #expect(rest.first?.seq == stream.firstRetained)
        #expect(rest.last?.seq == 100)
    }

    @Test func retentionKeepsTheNewestDeploymentsPerService() async throws {
        var configuration = LogsConfiguration()
        configuration.retentionDeploymentsPerService = 2
        let directory = temporaryDirectory()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let store = try LogStore(directory: directory, configuration: configuration, logger: logger)
        for i in 0..<5 {
            _ = try await store.append([line("x", StreamID(uncheckedKind: .deployment, environment: "prod", name: "dep-\(i)"))])
        }
        _ = try await store.append([line("x", StreamID(uncheckedKind: .deployment, environment: "staging", name: "dep-0"))])
        // Newer deployments that name a service count for that service only.
        for (name, service) in [("dep-5", "api"), ("dep-6", "api"), ("dep-7", "web")] {
            var labelled = line("x", StreamID(uncheckedKind: .deployment, environment: "prod", name: name))
            labelled.1.serviceId = service
            _ = try await store.append([labelled])
        }
        try await RetentionService(store: store, logger: logger).enforce(now: Int64(Date().timeIntervalSince1970 * 1e9))
        let names = Set(store.allStreams.map { "\($0.id.environment)/\($0.id.name)" })
        // Newest 2 per service: unlabelled dep-3, dep-4; api dep-5, dep-6; web dep-7 only; staging's own.
        #expect(names == ["prod/dep-3", "prod/dep-4", "prod/dep-5", "prod/dep-6", "prod/dep-7", "staging/dep-0"])
        #expect(!FileManager.default.fileExists(atPath: "\(directory)/streams/d_prod_dep-0"))
    }
}

@Suite struct LineSplitterTests {
    @Test func splitsOnCharacterBoundariesAndLosesNothing() {
        let text = String(repeating: "aé€😀", count: 1000)
        let parts = LineSplitter.split(text, maxBytes: 100)
        #expect(parts.joined() == text)
        #expect(parts.allSatisfy { $0.utf8.count <= 100 })
        #expect(LineSplitter.split("short", maxBytes: 100) == ["short"])
    }
}

@Suite struct StreamIDTests {
    @Test func validatesKeysWithMessagesNamingTheField() {
        var key = Slipway_Logs_V1_StreamKey()
        #expect(throws: RPCError(.invalidArgument, "stream.environment_id is empty")) { try StreamID(key) }
        key.environmentId = "prod"
        key.serviceId = "web"
        key.deploymentId = "d1"
        #expect { try StreamID(key) } throws: { ($0 as? RPCError)?.message.contains("both") == true }
        key.deploymentId = ""
        key.serviceId = "../etc"
        #expect { try StreamID(key) } throws: { ($0 as? RPCError)?.message.contains("stream.service_id") == true }
    }

    @Test func directoryNamesRoundTrip() {
        for id in [web, deploy, StreamID(uncheckedKind: .application, environment: "my_env", name: "svc_1")] {
            #expect(StreamID(directoryName: id.directoryName) == id)
        }
    }
}
