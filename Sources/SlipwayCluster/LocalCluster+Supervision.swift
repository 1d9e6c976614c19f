import Foundation
import Logging
import SlipwayServiceKit

#if canImport(Glibc)
import Glibc
#endif

/// Supervision: instances that exit are started again with the crash-loop backoff.
extension LocalCluster {
    /// How often ``supervise(every:)`` looks at the instances.
    public static let supervisionPeriod: Duration = .milliseconds(500)

    /// Runs ``superviseOnce(now:)`` until cancelled.
    public func supervise(every period: Duration = supervisionPeriod) async {
        while !Task.isCancelled {
            if !recovered { _ = try? await recover() }
            await superviseOnce()
            await checkLiveness()
            await publishChanges()
            try? await Task.sleep(for: period)
        }
    }

    /// One look at every workload not stopped on purpose: an instance that has exited is noted, and
    /// started again once its backoff has passed.
    public func superviseOnce(now: Date = Date()) async {
        guard let states = try? await runtime.list() else { return }
        let running = Set(states.filter { $0.status == .running }.map(\.id))
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory + "/workloads")) ?? []
        // What the records name, read once here after runc was listed (for ``removeOrphans``).
        var known: Set<String>? = []
        for file in files where file.hasSuffix(".json") {
            let serviceID = String(file.dropLast(5))
            guard let peek = try? load(serviceID) else {
                known = nil
                continue
            }
            known?.formUnion((peek.current + peek.pending + (peek.retiring ?? [])).map(\.id))
            guard peek.stopped != true, peek.current.contains(where: { !running.contains($0.id) || $0.exitedAt != nil }) else { continue }
            await turns.acquire(serviceID)
            defer { turns.release(serviceID) }
            // Read again under the lock: a deploy may have replaced them meanwhile (and started new
            // instances the first listing did not show).
            guard var record = try? load(serviceID), record.stopped != true else { continue }
            let running = record == peek ? running : Set(((try? await runtime.list()) ?? []).filter { $0.status == .running }.map(\.id))
            let time = now.timeIntervalSince1970
            for index in record.current.indices {
                var instance = record.current[index]
                if running.contains(instance.id) {
                    instance.exitedAt = nil
                } else if instance.exitedAt == nil {
                    instance.exitedAt = time
                    noteExit(&instance, at: time, memoryMiB: record.memoryMiB)
                    logger.warning("instance exited", metadata: [
                        "instance": "\(instance.id)", "restarts": "\(instance.restarts ?? 0)", "exit": "\(instance.lastExit ?? "")",
                    ])
                } else if let due = instance.nextRestartAt, due <= time {
                    do {
                        _ = try await runtime.restart(instance.id)
                        instance.restarts = (instance.restarts ?? 0) + 1
                        instance.crashes = (instance.crashes ?? 0) + 1
                        instance.startedAt = time
                        instance.exitedAt = nil
                    } catch {
                        logger.error("cannot restart an instance", metadata: ["instance": "\(instance.id)", "error": "\(error)"])
                    }
                }
                record.current[index] = instance
            }
            try? save(record)
        }
        if let known { await removeOrphans(listed: states, known: known) }
    }

    /// Instances runc runs that no workload's record names (a removal that failed after the record
    /// let go of them, a kill between the two): nothing would ever stop them, so they go. `known`
    /// was read after runc was listed, and an instance is on its record before it starts: one a
    /// deploy is starting now is never taken for an orphan. The caller passes nothing when a record
    /// could not be read (what it names cannot be told).
    func removeOrphans(listed states: [LocalRuntime.InstanceState], known: Set<String>) async {
        for state in states where !known.contains(state.id) {
            logger.warning("removing an instance no workload names", metadata: ["instance": "\(state.id)"])
            try? await Self.remove(state.id, runtime, applicationLogs)
        }
    }
}
