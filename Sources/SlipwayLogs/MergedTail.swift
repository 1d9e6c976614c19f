import SlipwayProtos
import SlipwayRPC

/// A tail of every service's application logs in one environment, merged in timestamp order.
///
/// Each stream is read by its own cursor; a line is emitted only once every line up to its
/// timestamp is visible (the store's watermark), always the oldest head first, so the merged order
/// is the global ingest order and `since_nanos` = last timestamp + 1 resumes it exactly.
struct MergedTail {
    let store: LogStore
    let environment: String
    let filter: LineFilter

    private struct Cursor {
        let reader: LogReader
        var seq: UInt64
        var buffered: [LogEntry] = []
        var position = 0
        var head: LogEntry? { position < buffered.count ? buffered[position] : nil }
    }

    /// Streams lines from `since` (Unix nanoseconds; 0 from the beginning; nil live only).
    func run(since: Int64?, _ writer: ResponseWriter<RawBytes>) async throws {
        var cursors: [StreamID: Cursor] = [:]
        let startedAt = store.visibleTimestamp
        // Lines at or before `floor` were ingested before this tail's start: skip them.
        let floor = since.map { $0 - 1 } ?? startedAt
        var emittedThrough = floor
        while !Task.isCancelled {
            let watermark = store.visibleTimestamp
            for stream in store.applicationStreams(of: environment) where cursors[stream.id] == nil {
                let start = since == 0 ? 0 : try await store.cursor(of: stream, since: floor + 1)
                cursors[stream.id] = Cursor(reader: LogReader(store: store, stream: stream), seq: start)
            }
            var emitted = false
            while true {
                // Every stream without buffered lines reads more, so its next line competes for the head.
                for id in Array(cursors.keys) where cursors[id]!.head == nil {
                    var cursor = cursors[id]!
                    switch try await cursor.reader.next(after: cursor.seq, limit: 256) {
                    case .entries(let entries):
                        cursor.buffered = entries
                        cursor.position = 0
                    case .dropped(_, let last):
                        cursor.seq = last  // retention: a merged view has no per-stream marker to give
                    case .caughtUp:
                        break
                    }
                    cursors[id] = cursor
                }
                guard let (id, entry) = cursors.compactMap({ key, cursor in cursor.head.map { (key, $0) } })
                    .min(by: { $0.1.line.timestampNanos < $1.1.line.timestampNanos }),
                    entry.line.timestampNanos <= watermark
                else { break }
                cursors[id]!.position += 1
                cursors[id]!.seq = entry.seq
                if entry.line.timestampNanos > emittedThrough {
                    emittedThrough = entry.line.timestampNanos
                    if filter.isEmpty || filter.matches(entry.line) {
                        try await writer.write(RawBytes(entry.tailResponse))
                        emitted = true
                    }
                }
            }
            if !emitted { await store.waitForVisible(after: watermark) }
        }
        throw CancellationError()
    }
}
