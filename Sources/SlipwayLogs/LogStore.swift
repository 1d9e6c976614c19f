import Foundation
import Logging
import NIOCore
import NIOPosix
import SlipwayProtos
import SlipwayRPC
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The logs service's storage: one directory per stream of append-only segments, an in-memory window
/// per stream for live readers, and one writer that makes every batch durable before it is visible.
///
/// Durability: a batch is written to its streams' active segments, each touched file gets one
/// `fdatasync` (and the directory one `fsync` when a segment file is created), and only then are its
/// lines published to readers and acknowledged. A crash loses nothing acknowledged; a torn record at
/// the end of a segment is cut off on restart.
final class LogStore: Sendable {
    let root: String
    let configuration: LogsConfiguration
    private let logger: Logger
    private let streams = Mutex<[StreamID: LogStream]>([:])
    /// Serializes writers (appends, retention's removals); held on a thread-pool thread during I/O.
    private let writer = Mutex(WriterState())
    private let pool = NIOThreadPool.singleton
    /// Every line with a timestamp at or below this is visible in its stream: merged readers emit
    /// only up to it, so lines of one batch in several streams come out in timestamp order.
    private let visible = Mutex<(timestamp: Int64, waiters: [Int: CheckedContinuation<Void, Never>], next: Int)>((0, [:], 0))

    private struct WriterState {
        /// Open descriptors of active segments, by stream.
        var files: [StreamID: (fd: Int32, path: String)] = [:]
        var lastTimestamp: Int64 = 0
    }

    init(directory: String, configuration: LogsConfiguration, logger: Logger) throws {
        self.root = (directory as NSString).appendingPathComponent("streams")
        self.configuration = configuration
        self.logger = logger
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try recover()
    }

    // MARK: Streams

    /// The stream for `id`, created in memory when unknown (readers may wait for a stream to appear).
    func stream(_ id: StreamID) -> LogStream {
        streams.withLock { streams in
            if let stream = streams[id] { return stream }
            let stream = LogStream(id: id, directory: (root as NSString).appendingPathComponent(id.directoryName), windowLines: configuration.windowLines)
            streams[id] = stream
            return stream
        }
    }

    /// The stream for `id` when it exists (has or had lines, or readers waiting).
    func existingStream(_ id: StreamID) -> LogStream? {
        streams.withLock { $0[id] }
    }

    /// Every stream that has lines on disk.
    var allStreams: [LogStream] {
        streams.withLock { Array($0.values) }.filter { !$0.segments.isEmpty && !$0.isDeleted }
    }

    // MARK: Append

    /// Makes `lines` durable, then visible; returns the sequence numbers each stream assigned.
    func append(_ lines: [(StreamID, Slipway_Logs_V1_LogLine)]) async throws -> [Slipway_Logs_V1_AppendedRange] {
        let targets = lines.map { (stream($0.0), $0.1) }
        return try await pool.runIfActive { try self.appendNow(targets) }
    }

    private func appendNow(_ lines: [(LogStream, Slipway_Logs_V1_LogLine)]) throws -> [Slipway_Logs_V1_AppendedRange] {
        try writer.withLock { writer in
            // Per stream, in first-appearance order: the segments being extended and the records to write.
            var order: [StreamID] = []
            var work: [StreamID: StreamWrite] = [:]
            for (stream, var line) in lines {
                if work[stream.id] == nil {
                    order.append(stream.id)
                    work[stream.id] = StreamWrite(stream: stream, segments: stream.segments, nextSeq: stream.lastSeq + 1)
                }
                let now = Int64(Date().timeIntervalSince1970 * 1e9)
                writer.lastTimestamp = max(now, writer.lastTimestamp + 1)
                line.seq = work[stream.id]!.nextSeq
                line.timestampNanos = writer.lastTimestamp
                line.stream = stream.id.key
                do {
                    try work[stream.id]!.add(line, segmentBytes: configuration.segmentBytes, writer: &writer)
                } catch {
                    for id in order { work[id]!.rollBack(writer: &writer) }
                    throw error
                }
            }
            var ranges: [Slipway_Logs_V1_AppendedRange] = []
            do {
                for id in order {
                    try work[id]!.commit(writer: &writer)
                }
            } catch {
                // Not acknowledged, so not kept: the segments go back to what they held (a full
                // disk may have let part of the batch through), or the next batch's records would
                // sit after bytes the index does not know of.
                for id in order { work[id]!.rollBack(writer: &writer) }
                throw error
            }
            for id in order {
                let item = work[id]!
                item.stream.publish(item.entries, segments: item.segments)
            }
            let stamp = writer.lastTimestamp
            let waiters = visible.withLock { visible -> [CheckedContinuation<Void, Never>] in
                visible.timestamp = stamp
                let waiters = Array(visible.waiters.values)
                visible.waiters.removeAll()
                return waiters
            }
            for waiter in waiters { waiter.resume() }
            for id in order {
                let item = work[id]!
                var range = Slipway_Logs_V1_AppendedRange()
                range.stream = id.key
                range.firstSeq = item.entries.first!.seq
                range.lastSeq = item.entries.last!.seq
                ranges.append(range)
            }
            return ranges
        }
    }

    /// One stream's share of a batch being written.
    private struct StreamWrite {
        let stream: LogStream
        var segments: [Segment]
        var nextSeq: UInt64
        var entries: [LogEntry] = []
        var pending: [UInt8] = []
        var createdFile = false
        /// The stream's directory was made by this batch: its entry in the root is synced too.
        var createdDirectory = false

        init(stream: LogStream, segments: [Segment], nextSeq: UInt64) {
            self.stream = stream
            self.segments = segments
            self.nextSeq = nextSeq
        }

        /// After a failed write: the stream's files as they were before this batch (the last
        /// segment cut back to its known length, segments this batch began removed).
        mutating func rollBack(writer: inout WriterState) {
            if let open = writer.files.removeValue(forKey: stream.id) { Glibc.close(open.fd) }
            let before = stream.segments
            for segment in segments.dropFirst(before.count) { unlink(segment.path) }
            if let last = before.last { _ = truncate(last.path, off_t(last.bytes)) }
        }

        mutating func add(_ line: Slipway_Logs_V1_LogLine, segmentBytes: Int, writer: inout WriterState) throws {
            let bytes = line.serializedBytes()
            let recordBytes = bytes.count + Segment.headerBytes
            if segments.isEmpty || (!segments[segments.count - 1].isEmpty && segments[segments.count - 1].bytes + recordBytes > segmentBytes) {
                try flush(writer: &writer)
                if let open = writer.files.removeValue(forKey: stream.id) {
                    try FileIO.sync(open.fd, path: open.path)
                    Glibc.close(open.fd)
                }
                if !FileManager.default.fileExists(atPath: stream.directory) {
                    try FileManager.default.createDirectory(atPath: stream.directory, withIntermediateDirectories: true)
                    createdDirectory = true
                }
                let path = (stream.directory as NSString).appendingPathComponent(Segment.fileName(firstSeq: line.seq))
                segments.append(Segment(path: path, firstSeq: line.seq))
                createdFile = true
            }
            let offset = segments[segments.count - 1].bytes
            SegmentRecord.encode(bytes, into: &pending)
            segments[segments.count - 1].noteAppended(seq: line.seq, timestamp: line.timestampNanos, offset: offset, recordBytes: recordBytes)
            bytes.withUnsafeBytes { entries.append(LogEntry(line: line, lineBytes: $0)) }
            nextSeq += 1
        }

        /// Writes what is pending to the active segment.
        mutating func flush(writer: inout WriterState) throws {
            guard !pending.isEmpty, let segment = segments.last else { return }
            let file = try writer.files[stream.id] ?? {
                let fd = try FileIO.openForAppend(segment.path)
                return (fd, segment.path)
            }()
            writer.files[stream.id] = file
            try FileIO.writeAll(file.fd, pending, path: file.path)
            pending.removeAll(keepingCapacity: true)
        }

        /// Writes and syncs: after this the batch's lines of this stream survive a crash.
        mutating func commit(writer: inout WriterState) throws {
            try flush(writer: &writer)
            if let file = writer.files[stream.id] { try FileIO.sync(file.fd, path: file.path) }
            if createdFile { FileIO.syncDirectory(stream.directory) }
            if createdDirectory { FileIO.syncDirectory((stream.directory as NSString).deletingLastPathComponent) }
            if writer.files.count > 512 {  // bound open descriptors: close the others' (reopened on demand)
                for (id, file) in writer.files where id != stream.id {
                    Glibc.close(file.fd)
                    writer.files.removeValue(forKey: id)
                }
            }
        }
    }

    /// The newest timestamp whose lines are all visible.
    var visibleTimestamp: Int64 { visible.withLock { $0.timestamp } }

    /// Waits until lines newer than `timestamp` are visible anywhere (or the task is cancelled).
    func waitForVisible(after timestamp: Int64) async {
        let id = visible.withLock { visible -> Int in
            visible.next += 1
            return visible.next
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = visible.withLock { visible -> Bool in
                    if visible.timestamp > timestamp || Task.isCancelled { return true }
                    visible.waiters[id] = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            let waiter = visible.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }

    /// The application streams of `environment`.
    func applicationStreams(of environment: String) -> [LogStream] {
        streams.withLock { streams in
            streams.values.filter { $0.id.kind == .application && $0.id.environment == environment && !$0.isDeleted }
        }
    }

    // MARK: Reading from disk

    /// Lines of `segment` after `cursor` and at most `through`, up to `limit`; nil when retention
    /// removed the file meanwhile (the caller reads again and gets a `dropped` marker).
    func readDisk(segment: Segment, after cursor: UInt64, through: UInt64, limit: Int) async throws -> [LogEntry]? {
        try await pool.runIfActive { Self.readSegment(segment, after: cursor, through: through, limit: limit) }
    }

    static func readSegment(_ segment: Segment, after cursor: UInt64, through: UInt64, limit: Int) -> [LogEntry]? {
        var entries: [LogEntry] = []
        var offset = segment.offset(toFind: cursor + 1)
        let end = segment.bytes
        while offset < end && entries.count < limit {
            guard let chunk = FileIO.read(segment.path, offset: offset, length: min(1 << 20, end - offset)) else { return nil }
            var done = false
            let consumed = chunk.withUnsafeBytes { data in
                SegmentRecord.walk(data, from: 0) { _, payload in
                    guard let line = try? Slipway_Logs_V1_LogLine(serializedBuffer: payload) else { return true }
                    if line.seq > through || entries.count >= limit {
                        done = true
                        return false
                    }
                    if line.seq > cursor { entries.append(LogEntry(line: line, lineBytes: payload)) }
                    return true
                }
            }
            if done || consumed == 0 { break }
            offset += consumed
        }
        return entries
    }

    /// The cursor (sequence number before) of the first line of `stream` ingested at or after `time`.
    func cursor(of stream: LogStream, since time: Int64) async throws -> UInt64 {
        if let cursor = stream.cursorInWindow(since: time) { return cursor }
        for segment in stream.segments where segment.lastTimestamp >= time {
            let found = try await pool.runIfActive { () -> UInt64? in
                var cursor: UInt64?
                guard let data = FileIO.read(segment.path, offset: 0, length: segment.bytes) else { return nil }
                _ = data.withUnsafeBytes { data in
                    SegmentRecord.walk(data, from: 0) { _, payload in
                        guard let line = try? Slipway_Logs_V1_LogLine(serializedBuffer: payload) else { return true }
                        if line.timestampNanos >= time {
                            cursor = line.seq - 1
                            return false
                        }
                        return true
                    }
                }
                return cursor
            }
            if let found { return found }
        }
        return stream.lastSeq
    }

    // MARK: Retention

    /// Removes the oldest sealed segments of `stream` while `shouldRemove` says so (never the active
    /// one, and only a prefix: retained lines stay contiguous). Returns what went.
    func removeSegments(_ stream: LogStream, while shouldRemove: @escaping @Sendable (Segment) -> Bool) async throws -> (segments: Int, bytes: Int) {
        try await pool.runIfActive {
            let removed: [Segment] = self.writer.withLock { _ in
                let segments = stream.segments
                guard segments.count > 1 else { return [] }
                let prefix = Array(segments.dropLast().prefix(while: shouldRemove))
                guard !prefix.isEmpty else { return [] }
                stream.retain(segments: Array(segments.dropFirst(prefix.count)))
                return prefix
            }
            for segment in removed { unlink(segment.path) }
            if !removed.isEmpty { FileIO.syncDirectory(stream.directory) }
            return (removed.count, removed.reduce(0) { $0 + $1.bytes })
        }
    }

    /// Removes a whole stream (its directory) and forgets it.
    func deleteStream(_ stream: LogStream) async throws {
        try await pool.runIfActive {
            self.writer.withLock { writer in
                if let file = writer.files.removeValue(forKey: stream.id) { Glibc.close(file.fd) }
                self.streams.withLock { streams in
                    if streams[stream.id] === stream { streams.removeValue(forKey: stream.id) }
                }
                stream.retain(segments: [], deleted: true)
            }
            try? FileManager.default.removeItem(atPath: stream.directory)
            FileIO.syncDirectory(self.root)
        }
    }

    // MARK: Recovery

    /// Opens every stream directory: scans its segments, cuts a torn tail, rebuilds indexes and windows.
    private func recover() throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        var recovered = 0
        for name in names.sorted() {
            guard let id = StreamID(directoryName: name) else {
                logger.warning("ignoring unexpected entry in the logs directory", metadata: ["path": "\(root)/\(name)"])
                continue
            }
            let directory = (root as NSString).appendingPathComponent(name)
            let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".log") }.sorted()
            var state = LogStream.State()
            var window = CircularBuffer<LogEntry>()
            let numbered = files.compactMap { file in UInt64(file.dropLast(4)).map { (file, $0) } }
            for (index, (file, firstSeq)) in numbered.enumerated() {
                let path = (directory as NSString).appendingPathComponent(file)
                let size = FileIO.fileSize(path)
                guard let data = FileIO.read(path, offset: 0, length: size) else { continue }
                let nextSeq = index + 1 < numbered.count ? numbered[index + 1].1 : nil
                let recovery = data.withUnsafeBytes { SegmentRecovery($0, firstSeq: firstSeq, stream: nil, fillUpTo: nextSeq) }
                if recovery.needsRewrite {
                    // Intact records kept, a marker for each lost one: written beside, synced, renamed over.
                    logger.error(
                        "log records were corrupt on disk: kept every intact one, each lost line is replaced by a marker",
                        metadata: ["path": "\(path)", "lost-seqs": "\(Self.ranges(recovery.lost))", "skipped-bytes": "\(recovery.skippedBytes)"])
                    var bytes = [UInt8]()
                    for record in recovery.records { SegmentRecord.encode(record.bytes, into: &bytes) }
                    try FileIO.replace(path, with: bytes)
                } else if recovery.intactPrefix < size {
                    logger.warning("cutting a torn tail off a log segment", metadata: ["path": "\(path)", "valid-bytes": "\(recovery.intactPrefix)", "size": "\(size)"])
                    truncate(path, off_t(recovery.intactPrefix))
                }
                var segment = Segment(path: path, firstSeq: firstSeq)
                var offset = 0
                for record in recovery.records {
                    guard let line = record.bytes.withUnsafeBytes({ try? Slipway_Logs_V1_LogLine(serializedBuffer: $0) }) else { break }
                    segment.noteAppended(seq: line.seq, timestamp: line.timestampNanos, offset: offset, recordBytes: record.bytes.count + Segment.headerBytes)
                    record.bytes.withUnsafeBytes { window.append(LogEntry(line: line, lineBytes: $0)) }
                    if id.kind == .deployment, !line.serviceId.isEmpty { state.services.insert(line.serviceId) }
                    if window.count > configuration.windowLines { window.removeFirst() }
                    offset += record.bytes.count + Segment.headerBytes
                }
                if segment.isEmpty {
                    unlink(path)
                    continue
                }
                if let last = state.segments.last, last.lastSeq + 1 != segment.firstSeq { state.segments.removeAll() }  // keep a contiguous run
                state.segments.append(segment)
                state.lastSeq = segment.lastSeq
            }
            state.firstRetained = state.segments.first?.firstSeq ?? 1
            state.window = window
            if let last = state.segments.last {
                let stamp = last.lastTimestamp
                writer.withLock { $0.lastTimestamp = max($0.lastTimestamp, stamp) }
                visible.withLock { $0.timestamp = max($0.timestamp, stamp) }
            }
            streams.withLock { $0[id] = LogStream(id: id, directory: directory, windowLines: configuration.windowLines, recovered: state) }
            recovered += 1
        }
        if recovered > 0 { logger.info("recovered log streams", metadata: ["streams": "\(recovered)"]) }
    }

    /// `[3, 4, 5, 9]` → "3-5, 9".
    static func ranges(_ seqs: [UInt64]) -> String {
        var parts: [String] = []
        var index = 0
        while index < seqs.count {
            var end = index
            while end + 1 < seqs.count, seqs[end + 1] == seqs[end] + 1 { end += 1 }
            parts.append(end == index ? "\(seqs[index])" : "\(seqs[index])-\(seqs[end])")
            index = end + 1
        }
        return parts.joined(separator: ", ")
    }

    /// Closes open segment files.
    func closeFiles() {
        writer.withLock { writer in
            for file in writer.files.values { Glibc.close(file.fd) }
            writer.files.removeAll()
        }
    }
}
