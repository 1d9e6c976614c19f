import Foundation
import Logging
import SlipwayServiceKit

#if canImport(Glibc)
import Glibc
#endif

/// Liveness probes: an instance failing its threshold is killed and started again with the reason.
extension LocalCluster {
    /// Runs the liveness checks that are due (all at once); an instance whose check failed
    /// `failureThreshold` times in a row is stopped with the reason as its last exit, and the
    /// supervisor starts it again after its backoff.
    public func checkLiveness(now: Date = Date()) async {
        let time = now.timeIntervalSince1970
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory + "/workloads")) ?? []
        var due: [(serviceID: String, instance: Instance, liveness: Liveness)] = []
        for file in files where file.hasSuffix(".json") {
            guard let record = try? load(String(file.dropLast(5))), record.stopped != true, let liveness = record.liveness else { continue }
            for instance in record.current where instance.exitedAt == nil {
                let started = instance.startedAt ?? 0
                guard time - started >= liveness.initialDelay, time - (lastLivenessCheck[instance.id] ?? 0) >= liveness.period else { continue }
                due.append((record.workload.serviceID, instance, liveness))
            }
        }
        // Forget instances that are gone.
        let live = Set(due.map(\.instance.id))
        lastLivenessCheck = lastLivenessCheck.filter { live.contains($0.key) || time - $0.value < 3600 }
        livenessFailures = livenessFailures.filter { lastLivenessCheck[$0.key] != nil }
        guard !due.isEmpty else { return }
        for item in due { lastLivenessCheck[item.instance.id] = time }
        let runtime = self.runtime
        let results = await withTaskGroup(of: (String, Probe.Result).self, returning: [String: Probe.Result].self) { group in
            for item in due {
                group.addTask {
                    (item.instance.id, await Probe.check(item.liveness.check, instance: item.instance, runtime: runtime, timeout: .milliseconds(Int(item.liveness.timeout * 1000))))
                }
            }
            var results: [String: Probe.Result] = [:]
            for await (id, result) in group { results[id] = result }
            return results
        }
        for item in due {
            guard case .failure(let reason)? = results[item.instance.id] else {
                livenessFailures[item.instance.id] = nil
                continue
            }
            let failures = (livenessFailures[item.instance.id] ?? 0) + 1
            livenessFailures[item.instance.id] = failures
            guard failures >= item.liveness.failureThreshold else { continue }
            livenessFailures[item.instance.id] = nil
            await turns.acquire(item.serviceID)
            defer { turns.release(item.serviceID) }
            guard var record = try? load(item.serviceID), record.stopped != true,
                  let index = record.current.firstIndex(where: { $0.id == item.instance.id && $0.exitedAt == nil }) else { continue }
            // On record first: the supervisor sees an exited instance with this reason and restarts it.
            record.current[index].exitedAt = time
            record.current[index].lastExitAt = time
            record.current[index].oomKilled = false
            record.current[index].lastExit = "killed: liveness check failed \(failures) times in a row (\(reason))"
            try? save(record)
            logger.warning("liveness check failed; restarting", metadata: ["instance": "\(item.instance.id)", "reason": "\(reason)"])
            try? await runtime.stop(item.instance.id, grace: .seconds(10))
        }
    }

    /// A run of this long counts as healthy: the next exit starts the backoff again at 1 s.
    public static let healthyRun: TimeInterval = 600

    /// Reads how the run ended (its status, reaped; the kernel's OOM kill count of its cgroup).
    func noteExit(_ instance: inout Instance, at time: Double, memoryMiB: Int?) {
        let exit = runtime.reap(instance.id)
        let oom = (runtime.oomKills(instance.id) ?? 0) > 0
        instance.oomKilled = oom
        instance.lastExitAt = time
        var reason: String
        switch exit {
        case .exited(let code)?: reason = "exited with status \(code)"
        case .signaled(let signal)?: reason = "killed by signal \(signal)\(signal == 9 ? " (SIGKILL)" : signal == 15 ? " (SIGTERM)" : "")"
        case nil: reason = "exited (its status was not readable: it ended while another cluster-service process ran)"
        }
        if oom { reason += "; OOMKilled: the kernel killed it for going over its \(memoryMiB.map { "\($0) MiB " } ?? "")memory limit" }
        instance.lastExit = reason
        if let started = instance.startedAt, time - started >= Self.healthyRun { instance.crashes = 0 }
    }
}
