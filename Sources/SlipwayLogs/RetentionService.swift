import Foundation
import Logging
import ServiceLifecycle

/// Enforces retention in the background: by count (newest deployment streams per environment), by
/// age, and by total size (oldest segments first). Removals take the store's writer lock only to
/// update a stream's segment list; files are deleted outside it, so ingest and readers go on.
struct RetentionService: Service {
    let store: LogStore
    let logger: Logger

    func run() async throws {
        let interval = store.configuration.retentionInterval
        try? await cancelWhenGracefulShutdown {
            while true {
                try await Task.sleep(for: interval)
                do {
                    try await enforce(now: Int64(Date().timeIntervalSince1970 * 1e9))
                } catch {
                    logger.error("retention pass failed", metadata: ["error": "\(error)"])
                }
            }
        }
    }

    /// One pass; `now` in Unix nanoseconds.
    func enforce(now: Int64) async throws {
        let configuration = store.configuration
        var removedSegments = 0
        var removedBytes = 0
        var removedStreams = 0

        // Count: per service, the newest N deployments whose lines name it stay (lines naming no
        // service count as one more "service", the deployment as a whole). A deployment goes once
        // it is outside the newest N of every service it names.
        let deployments = Dictionary(grouping: store.allStreams.filter { $0.id.kind == .deployment }, by: \.id.environment)
        for streams in deployments.values {
            let newestFirst = streams.sorted { ($0.segments.first?.firstTimestamp ?? 0) > ($1.segments.first?.firstTimestamp ?? 0) }
            var keptPerService: [String: Int] = [:]
            for stream in newestFirst {
                var keep = false
                for service in stream.services.isEmpty ? [""] : stream.services {
                    let kept = keptPerService[service, default: 0]
                    if kept < configuration.retentionDeploymentsPerService {
                        keptPerService[service] = kept + 1
                        keep = true
                    }
                }
                if !keep {
                    try await store.deleteStream(stream)
                    removedStreams += 1
                }
            }
        }

        // Age: sealed segments past the cutoff; a deployment stream entirely past it goes whole.
        let cutoff = now - configuration.retentionMaxAge.nanosecondsValue
        for stream in store.allStreams {
            if stream.id.kind == .deployment, let last = stream.segments.last, last.lastTimestamp < cutoff {
                try await store.deleteStream(stream)
                removedStreams += 1
                continue
            }
            let removed = try await store.removeSegments(stream) { $0.lastTimestamp < cutoff }
            removedSegments += removed.segments
            removedBytes += removed.bytes
        }

        // Size: the oldest sealed segments across streams until under the limit.
        var total = Int64(store.allStreams.reduce(0) { $0 + $1.segments.reduce(0) { $0 + $1.bytes } })
        while total > configuration.retentionMaxBytes {
            let candidates = store.allStreams.compactMap { stream -> (LogStream, Segment)? in
                let segments = stream.segments
                return segments.count > 1 ? (stream, segments[0]) : nil
            }
            guard let (stream, oldest) = candidates.min(by: { $0.1.lastTimestamp < $1.1.lastTimestamp }) else { break }
            let path = oldest.path
            let removed = try await store.removeSegments(stream) { $0.path == path }
            guard removed.segments > 0 else { break }
            removedSegments += removed.segments
            removedBytes += removed.bytes
            total -= Int64(removed.bytes)
        }

        if removedSegments + removedStreams > 0 {
            logger.info("retention removed logs", metadata: [
                "streams": "\(removedStreams)", "segments": "\(removedSegments)", "bytes": "\(removedBytes)",
            ])
        }
    }
}

extension Duration {
    var nanosecondsValue: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
