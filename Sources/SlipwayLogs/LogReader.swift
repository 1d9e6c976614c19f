import SlipwayProtos
import SlipwayRPC

/// Reads a stream forward from a cursor, from memory when the window covers it, else from disk.
struct LogReader: Sendable {
    enum Step {
        case entries([LogEntry])
        case dropped(first: UInt64, last: UInt64)
        case caughtUp
    }

    let store: LogStore
    let stream: LogStream

    /// The next lines after `cursor` (at most `limit`), a retention gap, or nothing new yet.
    func next(after cursor: UInt64, limit: Int) async throws -> Step {
        while true {
            switch stream.read(after: cursor, limit: limit) {
            case .lines(let entries): return .entries(entries)
            case .dropped(let first, let last): return .dropped(first: first, last: last)
            case .caughtUp: return .caughtUp
            case .disk(let segment, let through):
                // nil or empty: retention removed the file under us; reading again reports the gap.
                // Disk batches stay small: a thousand lagging readers each holding a decoded batch
                // is what a fan-out's memory peak is made of.
                if let entries = try await store.readDisk(segment: segment, after: cursor, through: through, limit: min(limit, 64)), !entries.isEmpty {
                    return .entries(entries)
                }
                if stream.firstRetained <= cursor + 1 { try await Task.sleep(for: .milliseconds(1)) }
            }
        }
    }
}

/// What a reader asked to see.
struct LineFilter: Sendable {
    let minLevel: Int32
    let contains: String
    let instance: String
    let service: String

    init(_ filter: Slipway_Logs_V1_Filter?) {
        minLevel = filter?.minLevel.rawValue ?? 0
        contains = filter?.contains ?? ""
        instance = filter?.instanceId ?? ""
        service = filter?.serviceId ?? ""
    }

    var isEmpty: Bool { minLevel == 0 && contains.isEmpty && instance.isEmpty && service.isEmpty }

    /// A substring searched in every line a reader passes: bounded, as the ids it compares.
    static let maxContainsBytes = 1024
    static let maxIDBytes = 128

    static func validate(_ filter: Slipway_Logs_V1_Filter?) throws(RPCError) {
        guard let filter else { return }
        guard filter.contains.utf8.count <= maxContainsBytes else {
            throw RPCError(.invalidArgument, "filter.contains is longer than \(maxContainsBytes) bytes")
        }
        for (field, value) in [("instance_id", filter.instanceId), ("service_id", filter.serviceId)] where value.utf8.count > maxIDBytes {
            throw RPCError(.invalidArgument, "filter.\(field) is longer than \(maxIDBytes) bytes")
        }
    }

    func matches(_ line: Slipway_Logs_V1_LogLine) -> Bool {
        if minLevel > 0 && line.level.rawValue < minLevel { return false }
        if !instance.isEmpty && line.instanceId != instance { return false }
        if !service.isEmpty && line.serviceId != service && line.stream?.serviceId != service { return false }
        if !contains.isEmpty && !line.text.contains(contains) { return false }
        return true
    }
}
