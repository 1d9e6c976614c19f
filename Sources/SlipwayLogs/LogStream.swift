import NIOCore
import SlipwayProtos
import Synchronization

/// A line as kept in memory: decoded for filtering, and its `TailResponse` wire form, encoded once
/// and shared by every subscriber. A class: handing a batch to a thousand readers copies references.
final class LogEntry: Sendable {
    let line: Slipway_Logs_V1_LogLine
    let tailResponse: [UInt8]

    /// Builds the entry from a LogLine's wire bytes: `TailResponse { line = 1 }` is tag 0x0A, length, bytes.
    init(line: Slipway_Logs_V1_LogLine, lineBytes: UnsafeRawBufferPointer) {
        self.line = line
        var out = [UInt8]()
        out.reserveCapacity(lineBytes.count + 6)
        out.append(0x0A)
        var length = UInt64(lineBytes.count)
        while length >= 0x80 {
            out.append(UInt8(length & 0x7F) | 0x80)
            length >>= 7
        }
        out.append(UInt8(length))
        out.append(contentsOf: lineBytes)
        self.tailResponse = out
    }

    var seq: UInt64 { line.seq }
}

/// One stream's state: its segments on disk, the in-memory window of recent lines, and the readers
/// waiting for more. Appends come only from the store's writer; reads from any task.
final class LogStream: Sendable {
    /// What a reader at `cursor` gets next.
    enum Read {
        /// Lines from memory, in order, all after the cursor.
        case lines([LogEntry])
        /// Lines in (cursor, first retained) were removed by retention.
        case dropped(first: UInt64, last: UInt64)
        /// The next lines are only on disk: read `segment` up to `through`.
        case disk(segment: Segment, through: UInt64)
        /// Nothing after the cursor yet.
        case caughtUp
    }

    struct State {
        var segments: [Segment] = []
        /// Highest sequence number durable and visible (0: none yet).
        var lastSeq: UInt64 = 0
        /// The first sequence number not removed by retention.
        var firstRetained: UInt64 = 1
        var window = CircularBuffer<LogEntry>()
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
        var deleted = false
        /// Services named by the lines of a deployment stream (`service_id` labels), for retention.
        var services: Set<String> = []
    }

    let id: StreamID
    let directory: String
    let windowLines: Int
    private let state: Mutex<State>

    init(id: StreamID, directory: String, windowLines: Int, recovered: State = State()) {
        self.id = id
        self.directory = directory
        self.windowLines = windowLines
        self.state = Mutex(recovered)
    }

    var lastSeq: UInt64 { state.withLock { $0.lastSeq } }
    var segments: [Segment] { state.withLock { $0.segments } }
    var firstRetained: UInt64 { state.withLock { $0.firstRetained } }
    var isDeleted: Bool { state.withLock { $0.deleted } }
    var services: Set<String> { state.withLock { $0.services } }

    /// Publishes lines that are durable (called by the writer after fsync), and wakes readers.
    func publish(_ entries: [LogEntry], segments: [Segment]) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.segments = segments
            for entry in entries {
                if id.kind == .deployment { state.services.insert(entry.line.serviceId) }
                state.window.append(entry)
                if state.window.count > windowLines { state.window.removeFirst() }
            }
            if let last = entries.last { state.lastSeq = last.seq }
            let waiters = Array(state.waiters.values)
            state.waiters.removeAll()
            return waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Retention removed segments (or the whole stream): readers behind get a `dropped` marker.
    func retain(segments: [Segment], deleted: Bool = false) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.segments = segments
            state.firstRetained = segments.first?.firstSeq ?? state.lastSeq + 1
            while let first = state.window.first, first.seq < state.firstRetained { state.window.removeFirst() }
            state.deleted = deleted
            let waiters = Array(state.waiters.values)
            state.waiters.removeAll()
            return waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// What follows `cursor`, at most `limit` lines from memory.
    func read(after cursor: UInt64, limit: Int) -> Read {
        state.withLock { state in
            if cursor >= state.lastSeq { return .caughtUp }
            let next = cursor + 1
            if next < state.firstRetained {
                return .dropped(first: next, last: state.firstRetained - 1)
            }
            if let first = state.window.first, next >= first.seq {
                let start = Int(next - first.seq)
                let end = min(state.window.count, start + limit)
                var lines = [LogEntry]()
                lines.reserveCapacity(end - start)
                var index = state.window.index(state.window.startIndex, offsetBy: start)
                for _ in start..<end {
                    lines.append(state.window[index])
                    index = state.window.index(after: index)
                }
                return .lines(lines)
            }
            guard let segment = state.segments.last(where: { $0.firstSeq <= next }) else {
                return .dropped(first: next, last: (state.segments.first?.firstSeq ?? state.lastSeq + 1) - 1)
            }
            return .disk(segment: segment, through: min(segment.lastSeq, state.lastSeq))
        }
    }

    /// Waits until a line after `cursor` is visible, retention changed the stream, or the task is cancelled.
    func waitForLines(after cursor: UInt64) async {
        let id = state.withLock { state -> Int in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    if state.lastSeq > cursor || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }

    /// The sequence number just before the first line ingested at or after `time`, from memory when
    /// the window covers it; nil when the disk must be searched.
    func cursorInWindow(since time: Int64) -> UInt64? {
        state.withLock { state in
            guard let first = state.window.first, first.line.timestampNanos <= time else {
                return state.window.isEmpty && state.segments.isEmpty ? state.lastSeq : nil
            }
            for entry in state.window where entry.line.timestampNanos >= time { return entry.seq - 1 }
            return state.lastSeq
        }
    }
}
