import Logging
import SlipwayProtos
import SlipwayRPC
import Synchronization

/// `slipway.logs.v1.Logs`: Append, Tail, Query and ListStreams over the store.
struct LogsService: Slipway_Logs_V1_Logs.ServiceProtocol {
    let store: LogStore
    let logger: Logger
    private let subscribers = SubscriberCount()
    /// A line's instance id, stage, step and service id.
    static let maxLabelBytes = 128

    init(store: LogStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    func append(
        request batches: RequestStream<Slipway_Logs_V1_AppendRequest>, response: ResponseWriter<Slipway_Logs_V1_AppendResponse>, context: ServerContext
    ) async throws {
        for try await batch in batches {
            try await response.write(try await append(batch))
        }
    }

    /// Tail's responses are written pre-encoded: each line's TailResponse bytes are shared by every subscriber.
    func tail(request: Slipway_Logs_V1_TailRequest, response: ResponseWriter<Slipway_Logs_V1_TailResponse>, context: ServerContext) async throws {
        try await tail(request, response.preEncoded)
    }

    func query(request: Slipway_Logs_V1_QueryRequest, context: ServerContext) async throws -> Slipway_Logs_V1_QueryResponse {
        try await query(request)
    }

    func listStreams(request: Slipway_Logs_V1_ListStreamsRequest, context: ServerContext) async throws -> Slipway_Logs_V1_ListStreamsResponse {
        var response = Slipway_Logs_V1_ListStreamsResponse()
        response.streams = store.allStreams.map { stream in
            var info = Slipway_Logs_V1_StreamInfo()
            info.stream = stream.id.key
            let segments = stream.segments
            info.firstSeq = segments.first?.firstSeq ?? 0
            info.lastSeq = stream.lastSeq
            info.bytes = UInt64(segments.reduce(0) { $0 + $1.bytes })
            return info
        }.sorted { ($0.stream?.environmentId ?? "", $0.stream?.deploymentId ?? "", $0.stream?.serviceId ?? "") < ($1.stream?.environmentId ?? "", $1.stream?.deploymentId ?? "", $1.stream?.serviceId ?? "") }
        return response
    }

    // MARK: Append

    func append(_ batch: Slipway_Logs_V1_AppendRequest) async throws -> Slipway_Logs_V1_AppendResponse {
        guard !batch.lines.isEmpty else {
            throw RPCError(.invalidArgument, "batch \(batch.batchId) has no lines")
        }
        guard batch.lines.count <= store.configuration.maxLinesPerBatch else {
            throw RPCError(.invalidArgument, "batch \(batch.batchId) has \(batch.lines.count) lines; the limit is \(store.configuration.maxLinesPerBatch) per batch")
        }
        var lines: [(StreamID, Slipway_Logs_V1_LogLine)] = []
        lines.reserveCapacity(batch.lines.count)
        for (index, line) in batch.lines.enumerated() {
            let id: StreamID
            do {
                id = try StreamID(line.stream)
            } catch {
                throw RPCError(.invalidArgument, "batch \(batch.batchId) lines[\(index)]: \(error.message)")
            }
            // Copied into every part of a split line and into every reader's response: bounded.
            for (field, value) in [("instance_id", line.instanceId), ("stage", line.stage), ("step", line.step), ("service_id", line.serviceId)]
            where value.utf8.count > Self.maxLabelBytes {
                throw RPCError(.invalidArgument, "batch \(batch.batchId) lines[\(index)].\(field) is longer than \(Self.maxLabelBytes) bytes")
            }
            let parts = LineSplitter.split(line.text, maxBytes: store.configuration.maxLineBytes)
            for (part, text) in parts.enumerated() {
                var stored = line
                stored.text = text
                stored.continued = part < parts.count - 1
                lines.append((id, stored))
            }
        }
        do {
            var response = Slipway_Logs_V1_AppendResponse()
            response.batchId = batch.batchId
            response.ranges = try await store.append(lines)
            return response
        } catch let error as FileIO.Failure {
            logger.error("cannot store log lines", metadata: ["error": "\(error)"])
            throw RPCError(.unavailable, "the logs service cannot store lines right now (\(error)); retry the batch")
        }
    }

    // MARK: Tail

    func tail(_ request: Slipway_Logs_V1_TailRequest, _ writer: ResponseWriter<RawBytes>) async throws {
        guard subscribers.enter(limit: store.configuration.maxSubscribers) else {
            throw RPCError(.resourceExhausted, "the logs service already serves \(store.configuration.maxSubscribers) tails; close some or retry later")
        }
        defer { subscribers.leave() }
        try LineFilter.validate(request.filter)
        if let key = request.stream, !key.environmentId.isEmpty, key.deploymentId.isEmpty, key.serviceId.isEmpty {
            _ = try StreamID(kind: .application, environment: key.environmentId, name: "merged")  // validates the environment id
            let merged = MergedTail(store: store, environment: key.environmentId, filter: LineFilter(request.filter))
            switch request.start {
            case .afterSeq?:
                throw RPCError(.invalidArgument, "after_seq needs a single stream (set deployment_id or service_id); resume an environment tail with since_nanos = last timestamp + 1")
            case .sinceNanos(let time)?: try await merged.run(since: max(time, 1), writer)
            case .liveOnly?: try await merged.run(since: nil, writer)
            case nil: try await merged.run(since: 0, writer)
            }
            return
        }
        let id = try StreamID(request.stream)
        let stream = store.stream(id)
        var cursor: UInt64
        // Lines ingested before this are not delivered (a time in the future waits for it).
        var notBefore: Int64 = 0
        switch request.start {
        case .afterSeq(let seq)?:
            guard seq <= stream.lastSeq else {
                throw RPCError(.outOfRange, "cursor \(seq) is beyond the last line of \(id) (\(stream.lastSeq)); resume from a sequence number you received")
            }
            cursor = seq
        case .sinceNanos(let time)?:
            cursor = try await store.cursor(of: stream, since: time)
            notBefore = time
        case .liveOnly?: cursor = stream.lastSeq
        case nil: cursor = 0
        }
        let filter = LineFilter(request.filter)
        let reader = LogReader(store: store, stream: stream)
        while !Task.isCancelled {
            switch try await reader.next(after: cursor, limit: 512) {
            case .entries(let entries):
                for entry in entries where entry.line.timestampNanos >= notBefore && (filter.isEmpty || filter.matches(entry.line)) {
                    try await writer.write(RawBytes(entry.tailResponse))
                }
                cursor = entries.last!.seq
            case .dropped(let first, let last):
                var dropped = Slipway_Logs_V1_Dropped()
                dropped.firstSeq = first
                dropped.lastSeq = last
                dropped.count = last - first + 1
                var response = Slipway_Logs_V1_TailResponse()
                response.item = .dropped(dropped)
                try await writer.write(RawBytes(response.serializedBytes()))
                cursor = last
            case .caughtUp:
                await stream.waitForLines(after: cursor)
            }
        }
        throw CancellationError()
    }

    // MARK: Query

    func query(_ request: Slipway_Logs_V1_QueryRequest) async throws -> Slipway_Logs_V1_QueryResponse {
        try LineFilter.validate(request.filter)
        let id = try StreamID(request.stream)
        let pageSize = request.pageSize == 0 ? 100 : Int(request.pageSize)
        guard pageSize <= 1000 else {
            throw RPCError(.invalidArgument, "page_size \(request.pageSize) is over the limit of 1000")
        }
        // Queries never create streams: an unknown one simply has no lines.
        guard let stream = store.existingStream(id) else {
            if !request.pageToken.isEmpty && !request.pageToken.hasPrefix("after:") {
                throw RPCError(.invalidArgument, "page_token \"\(request.pageToken)\" is not one this service issued; pass next_page_token from the previous response")
            }
            return Slipway_Logs_V1_QueryResponse()
        }
        var cursor: UInt64
        if request.pageToken.isEmpty {
            cursor = request.sinceNanos > 0 ? try await store.cursor(of: stream, since: request.sinceNanos) : 0
        } else {
            guard request.pageToken.hasPrefix("after:"), let seq = UInt64(request.pageToken.dropFirst(6)) else {
                throw RPCError(.invalidArgument, "page_token \"\(request.pageToken)\" is not one this service issued; pass next_page_token from the previous response")
            }
            cursor = seq
        }
        let filter = LineFilter(request.filter)
        let reader = LogReader(store: store, stream: stream)
        var response = Slipway_Logs_V1_QueryResponse()
        var scanned = 0
        scan: while response.lines.count < pageSize {
            guard scanned < 100_000 else {
                response.nextPageToken = "after:\(cursor)"  // bound the work of one call; the next page goes on
                break
            }
            switch try await reader.next(after: cursor, limit: 512) {
            case .entries(let entries):
                for entry in entries {
                    scanned += 1
                    if request.untilNanos > 0 && entry.line.timestampNanos > request.untilNanos { break scan }
                    cursor = entry.seq
                    if filter.matches(entry.line) {
                        response.lines.append(entry.line)
                        if response.lines.count == pageSize {
                            if cursor < stream.lastSeq { response.nextPageToken = "after:\(cursor)" }
                            break scan
                        }
                    }
                }
            case .dropped(_, let last):
                cursor = last
            case .caughtUp:
                break scan
            }
        }
        return response
    }
}

/// Counts open tails against the limit.
final class SubscriberCount: Sendable {
    private let count = Atomic<Int>(0)

    func enter(limit: Int) -> Bool {
        if count.wrappingAdd(1, ordering: .relaxed).newValue > limit {
            count.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func leave() { count.wrappingSubtract(1, ordering: .relaxed) }
}
