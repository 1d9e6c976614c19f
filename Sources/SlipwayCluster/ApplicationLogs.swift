import Foundation
import Logging
import SlipwayProcess
import SlipwayProtos
import SlipwayRPC
import SlipwayServiceKit

/// Ships every instance's stdout and stderr to the logs service, line by line, labelled with the
/// instance: no line lost and none sent twice, across instance restarts, cluster-service restarts
/// and logs-service outages.
///
/// The instances' output files are the buffer. For each instance, `<directory>/<id>.json` records its
/// workload and how far each file has been shipped; it advances only once the logs service has
/// acknowledged the lines (they are durable there). Every line carries the byte offset after it
/// (`source_offset`), so a cluster service killed between an acknowledgement and the record being
/// written finds, at start, where the logs service already is and resumes from there.
/// A removed instance's files are moved to `<directory>/retired/` by the runtime and shipped to
/// their end before they are deleted.
///
/// The files stay bounded on disk: once the logs service has acknowledged a prefix, its blocks are
/// given back (a hole is punched: offsets stay valid, the instance keeps appending to the same
/// file). What is not acknowledged yet is kept up to ``maxBacklogBytes`` per file; an instance that
/// writes more while the logs service is away or behind loses its oldest unshipped output, and the
/// stream says so with a line `[slipway] N bytes of stdout dropped: …` where they were.
public final class ApplicationLogs: Sendable {
    struct Shipped: Codable, Equatable {
        var environmentID: String
        var serviceID: String
        var stdout: UInt64 = 0
        var stderr: UInt64 = 0
        /// When lines were last sent (Unix seconds): the start of the window read back after a crash.
        var sentAt: Double = 0
        /// The instance was removed: once its files are shipped to their end, the record goes.
        var retired: Bool? = nil
    }

    /// Longest line sent as one; longer output is cut (the logs service may cut further).
    public static let maxLineBytes = 16 * 1024
    /// Lines per Append batch.
    public static let maxLinesPerBatch = 500
    /// Bytes read from one file per pass.
    static let maxReadBytes = 256 * 1024
    /// Unshipped output kept per file by default (`--cluster-output-backlog-mib`).
    public static let defaultMaxBacklogBytes: UInt64 = 64 * 1024 * 1024
    /// Acknowledged output is given back in whole blocks of this size.
    static let releaseGranule: UInt64 = 64 * 1024

    let directory: String
    let runtime: LocalRuntime
    let client: Slipway_Logs_V1_Logs.Client
    let logger: Logger
    let interval: Duration
    /// Unshipped bytes kept per file; beyond, the oldest are dropped (and the stream says so).
    public let maxBacklogBytes: UInt64

    public init(directory: String, runtime: LocalRuntime, client: RPCClient, interval: Duration = .milliseconds(200),
                maxBacklogBytes: UInt64 = ApplicationLogs.defaultMaxBacklogBytes, logger: Logger) throws {
        self.directory = directory
        self.maxBacklogBytes = max(maxBacklogBytes, UInt64(Self.maxReadBytes))
        self.runtime = runtime
        self.client = .init(wrapping: client)
        self.interval = interval
        self.logger = logger
        try FileManager.default.createDirectory(atPath: directory + "/retired", withIntermediateDirectories: true)
    }

    var retiredDirectory: String { directory + "/retired" }

    /// Called before an instance starts: from now on its output is shipped.
    public func register(_ instanceID: String, workload: Workload) {
        let path = statePath(instanceID)
        guard !FileManager.default.fileExists(atPath: path) else { return }
        save(instanceID, Shipped(environmentID: workload.environmentID, serviceID: workload.serviceID))
    }

    /// Until cancelled: finds where the logs service is for every instance (once), then ships.
    public func run() async {
        var recovered = false
        var reported = false
        while !Task.isCancelled {
            do {
                if !recovered {
                    try await recover()
                    recovered = true
                }
                let more = try await shipOnce()
                reported = false
                // A file had more than one read's worth: go on at once.
                if more { continue }
            } catch {
                // An append may have been stored with its answer lost: find out before sending again.
                recovered = false
                if !reported {
                    logger.warning("cannot ship application logs; the lines wait in the instances' files", metadata: ["error": "\(error)"])
                    reported = true
                }
            }
            try? await Task.sleep(for: interval)
        }
    }

    /// A killed service may have had lines acknowledged that its records do not show: read back what
    /// the logs service holds of each instance since its last send, and skip past it.
    func recover() async throws {
        for id in instanceIDs() {
            guard var shipped = load(id), shipped.sentAt > 0 else { continue }
            var request = Slipway_Logs_V1_QueryRequest()
            var key = Slipway_Logs_V1_StreamKey()
            key.environmentId = shipped.environmentID
            key.serviceId = shipped.serviceID
            request.stream = key
            request.sinceNanos = Int64((shipped.sentAt - 60) * 1_000_000_000)
            var filter = Slipway_Logs_V1_Filter()
            filter.instanceId = id
            request.filter = filter
            request.pageSize = 1000
            var changed = false
            while true {
                let page: Slipway_Logs_V1_QueryResponse
                do {
                    page = try await client.query(request)
                } catch let error as RPCError where error.code == .notFound {
                    break
                }
                for line in page.lines {
                    if line.source == .stderr, line.sourceOffset > shipped.stderr { shipped.stderr = line.sourceOffset; changed = true }
                    if line.source == .stdout, line.sourceOffset > shipped.stdout { shipped.stdout = line.sourceOffset; changed = true }
                }
                if page.nextPageToken.isEmpty { break }
                request.pageToken = page.nextPageToken
            }
            if changed {
                logger.info("application logs resume after lines already shipped", metadata: ["instance": "\(id)"])
                save(id, shipped)
            }
        }
    }

    /// One pass over every instance: new complete lines are sent, acknowledged, then recorded. An
    /// instance the logs service refuses does not hold up the others; the first failure is thrown
    /// at the end of the pass.
    /// Returns whether some file has more to read than one pass took.
    @discardableResult
    func shipOnce() async throws -> Bool {
        var failure: (any Error)?
        var more = false
        for id in instanceIDs() {
            do {
                if try await ship(id) { more = true }
            } catch {
                failure = failure ?? error
            }
        }
        if let failure { throw failure }
        return more
    }

    private func ship(_ id: String) async throws -> Bool {
        guard var shipped = load(id) else { return false }
        let live = FileManager.default.fileExists(atPath: runtime.instanceDirectory(id))
        let retired = !live && FileManager.default.fileExists(atPath: retiredPath(id, .stdout))
        guard live || retired else {
            // Registered but not started yet: wait. Removed without output kept: done.
            if shipped.retired == true { unlink(statePath(id)) }
            return false
        }
        var lines: [Slipway_Logs_V1_LogLine] = []
        var next = shipped
        var more = false
        for source in [Source.stdout, .stderr] {
            let path = live ? (source == .stdout ? runtime.stdoutPath(id) : runtime.stderrPath(id)) : retiredPath(id, source)
            var offset = source == .stdout ? shipped.stdout : shipped.stderr
            let size = Self.size(of: path)
            if size > offset, size - offset > maxBacklogBytes {
                // Too far behind: the oldest unshipped output goes, and the stream says so.
                let skipTo = size - maxBacklogBytes / 2
                let name = source == .stdout ? "stdout" : "stderr"
                lines.append(line(shipped, id, source, "[slipway] \(skipTo - offset) bytes of \(name) dropped: the instance wrote more than the \(maxBacklogBytes / 1024 / 1024) MiB the cluster keeps unshipped while the logs service was away or behind", after: skipTo, level: .warn))
                logger.warning("application output dropped: backlog over its limit", metadata: ["instance": "\(id)", "source": "\(name)", "bytes": "\(skipTo - offset)"])
                offset = skipTo
            }
            let (read, end) = Self.lines(in: path, from: offset, final: retired)
            for (text, after) in read {
                lines.append(line(shipped, id, source, text, after: after, level: source == .stdout ? .info : .warn))
            }
            if source == .stdout { next.stdout = end } else { next.stderr = end }
            if size > end, size - end >= UInt64(Self.maxReadBytes) { more = true }
        }
        if !lines.isEmpty {
            next.sentAt = Date().timeIntervalSince1970
            // The send time goes on record first: it bounds what a restart reads back.
            var sending = shipped
            sending.sentAt = next.sentAt
            save(id, sending)
            for start in stride(from: 0, to: lines.count, by: Self.maxLinesPerBatch) {
                let batch = Array(lines[start..<min(lines.count, start + Self.maxLinesPerBatch)])
                try await append(batch)
                // Each acknowledged batch on record at once: a later failure does not send it again.
                for line in batch {
                    if line.source == .stdout { sending.stdout = max(sending.stdout, line.sourceOffset) } else { sending.stderr = max(sending.stderr, line.sourceOffset) }
                }
                save(id, sending)
            }
            shipped = next
            save(id, shipped)
        } else if next != shipped {
            shipped = next
            save(id, shipped)
        }
        if live, !lines.isEmpty {
            // Acknowledged and on record: the blocks go back to the file system.
            FileSpace.release(runtime.stdoutPath(id), before: shipped.stdout, granule: Self.releaseGranule)
            FileSpace.release(runtime.stderrPath(id), before: shipped.stderr, granule: Self.releaseGranule)
        }
        if retired, lines.isEmpty {
            // Shipped to the end: the instance is gone for good.
            for source in [Source.stdout, .stderr] { unlink(retiredPath(id, source)) }
            unlink(statePath(id))
        }
        return more
    }

    private func line(_ shipped: Shipped, _ id: String, _ source: Source, _ text: String, after: UInt64, level: Slipway_Logs_V1_Level) -> Slipway_Logs_V1_LogLine {
        var line = Self.logLine(environmentID: shipped.environmentID, serviceID: shipped.serviceID, instanceID: id,
                                source: source == .stdout ? .stdout : .stderr, level: level, text: text)
        line.sourceOffset = after
        line.emittedNanos = Int64(Date().timeIntervalSince1970 * 1_000_000_000)
        return line
    }

    /// A line of an instance's output, labelled for the logs service.
    static func logLine(environmentID: String, serviceID: String, instanceID: String, source: Slipway_Logs_V1_Source,
                        level: Slipway_Logs_V1_Level, text: String) -> Slipway_Logs_V1_LogLine {
        var line = Slipway_Logs_V1_LogLine()
        var key = Slipway_Logs_V1_StreamKey()
        key.environmentId = environmentID
        key.serviceId = serviceID
        line.stream = key
        line.instanceId = instanceID
        line.source = source
        line.level = level
        line.text = text
        return line
    }

    static func size(of path: String) -> UInt64 {
        var info = stat()
        guard stat(path, &info) == 0 else { return 0 }
        return UInt64(info.st_size)
    }

    private func append(_ lines: [Slipway_Logs_V1_LogLine]) async throws {
        var batch = Slipway_Logs_V1_AppendRequest()
        batch.batchId = 1
        batch.lines = lines
        let request = batch
        try await client.append(requests: { writer in
            try await writer.write(request)
        }, responses: { responses in
            var acknowledged = false
            for try await _ in responses { acknowledged = true }
            guard acknowledged else { throw RPCError(.unavailable, "the logs service closed the stream without acknowledging the batch") }
        })
    }

    enum Source { case stdout, stderr }

    /// Complete lines of `path` after `offset` (each with the offset after it), and the offset the
    /// next read starts at. A line longer than ``maxLineBytes`` is cut; a last line without a newline
    /// waits for the rest unless `final`.
    static func lines(in path: String, from offset: UInt64, final: Bool) -> (lines: [(String, UInt64)], end: UInt64) {
        guard let handle = FileHandle(forReadingAtPath: path) else { return ([], offset) }
        defer { try? handle.close() }
        guard (try? handle.seek(toOffset: offset)) != nil, let data = try? handle.read(upToCount: maxReadBytes), !data.isEmpty else {
            return ([], offset)
        }
        let bytes = [UInt8](data)
        var result: [(String, UInt64)] = []
        var start = 0
        var index = 0
        while index < bytes.count {
            if bytes[index] == 10 || index - start == maxLineBytes {
                let end = bytes[index] == 10 ? index + 1 : index
                result.append((String(decoding: bytes[start..<index], as: UTF8.self), offset + UInt64(end)))
                start = end
                index = end
                continue
            }
            index += 1
        }
        if start < bytes.count, final, bytes.count < maxReadBytes {
            result.append((String(decoding: bytes[start...], as: UTF8.self), offset + UInt64(bytes.count)))
            start = bytes.count
        }
        return (result, offset + UInt64(start))
    }

    // MARK: Files

    func statePath(_ id: String) -> String { directory + "/\(id).json" }
    func retiredPath(_ id: String, _ source: Source) -> String { retiredDirectory + "/\(id).\(source == .stdout ? "stdout" : "stderr").log" }

    /// Moves a removed instance's output out of its directory (same file system: offsets stay valid)
    /// and marks its record, which goes once the files are shipped to their end.
    func retire(_ id: String) {
        guard var shipped = load(id) else { return }
        let moved = rename(runtime.stdoutPath(id), retiredPath(id, .stdout)) == 0
        rename(runtime.stderrPath(id), retiredPath(id, .stderr))
        // Retired files say it already; the mark is for an instance that never wrote a file.
        guard !moved else { return }
        shipped.retired = true
        save(id, shipped)
    }

    private func instanceIDs() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }.sorted()
    }

    private func load(_ id: String) -> Shipped? {
        FileManager.default.contents(atPath: statePath(id)).flatMap { try? JSONDecoder().decode(Shipped.self, from: $0) }
    }

    private func save(_ id: String, _ shipped: Shipped) {
        do {
            try AtomicFile.write(try JSONEncoder().encode(shipped), to: statePath(id), mode: 0o600)
        } catch {
            logger.warning("cannot record shipped application logs", metadata: ["instance": "\(id)", "error": "\(error)"])
        }
    }
}
