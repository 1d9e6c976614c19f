import Foundation

/// Running status (docs/architecture.md) of instances and workloads, and the watchers that follow it.
extension LocalCluster {
    /// Every workload as it is now.
    public func statuses() async -> [WorkloadStatus] {
        let running = Set(((try? await runtime.list()) ?? []).filter { $0.status == .running }.map(\.id))
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory + "/workloads")) ?? []
        var result: [WorkloadStatus] = []
        for file in files.sorted() where file.hasSuffix(".json") {
            guard let record = try? load(String(file.dropLast(5))) else { continue }
            result.append(Self.status(record, running: running))
        }
        return result
    }

    static func status(_ record: Record, running: Set<String>) -> WorkloadStatus {
        let stopped = record.stopped == true
        let instances = record.current.map { instance -> InstanceStatus in
            let isRunning = running.contains(instance.id)
            let status: RunningStatus = stopped ? (isRunning ? .stopping : .stopped) : (isRunning ? .running : .error)
            return InstanceStatus(instance: instance, running: isRunning, status: status)
        }
        let overall: RunningStatus
        if stopped {
            overall = instances.contains { $0.running } ? .stopping : .stopped
        } else if instances.isEmpty {
            overall = record.pending.isEmpty ? .stopped : .starting
        } else if instances.allSatisfy({ $0.status == .running }) {
            overall = .running
        } else if instances.contains(where: { $0.status == .running }) {
            overall = .warning
        } else {
            overall = .error
        }
        return WorkloadStatus(workload: record.workload, status: overall, instances: instances)
    }

    // MARK: Watchers

    /// Follows every change of the workloads' running status. The stream first yields nothing: call
    /// ``statuses()`` after subscribing for the snapshot (a change between the two arrives twice,
    /// never not at all).
    public func watch() -> (id: UUID, changes: AsyncStream<WorkloadStatus>) {
        let id = UUID()
        let (stream, continuation) = AsyncStream<WorkloadStatus>.makeStream(bufferingPolicy: .bufferingNewest(Self.maxWatchBuffer))
        watchers[id] = continuation
        return (id, stream)
    }

    public func unwatch(_ id: UUID) {
        watchers.removeValue(forKey: id)?.finish()
    }

    /// Changes a watcher may fall behind by; beyond, the oldest are skipped (each is a whole state,
    /// so the latest always arrives).
    public static let maxWatchBuffer = 1000

    /// Sends the workloads whose status changed since the last call to every watcher. Calls take
    /// turns: a snapshot is never published after a newer one.
    func publishChanges() async {
        await turns.acquire("\u{0}publish")
        defer { turns.release("\u{0}publish") }
        let now = await statuses()
        var seen = Set<String>()
        for status in now {
            seen.insert(status.workload.serviceID)
            guard published[status.workload.serviceID] != status else { continue }
            published[status.workload.serviceID] = status
            for watcher in watchers.values { watcher.yield(status) }
        }
        // Deleted workloads: a last word, with no instance.
        for (serviceID, last) in published where !seen.contains(serviceID) {
            published[serviceID] = nil
            let gone = WorkloadStatus(workload: last.workload, status: .stopped, instances: [])
            for watcher in watchers.values { watcher.yield(gone) }
        }
    }
}
