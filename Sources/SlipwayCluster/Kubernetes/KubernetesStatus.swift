import Foundation

/// What the Kubernetes API's objects say, in the cluster service's terms: a Deployment's rollout
/// (kubectl's `rollout status` rules) and a pod's running status, restarts and last exit.
public enum KubernetesStatus {
    public enum Rollout: Sendable, Equatable {
        case progressing(String)
        case complete(String)
        /// The Deployment's progress deadline passed (`ProgressDeadlineExceeded`).
        case failed(String)
    }

    /// kubectl's rules (`rollout status deployment/NAME`), with its messages.
    public static func rollout(_ deployment: [String: Any]) -> Rollout {
        let metadata = deployment["metadata"] as? [String: Any] ?? [:]
        let spec = deployment["spec"] as? [String: Any] ?? [:]
        let status = deployment["status"] as? [String: Any] ?? [:]
        let name = metadata["name"] as? String ?? "?"
        let generation = metadata["generation"] as? Int ?? 0
        let observed = status["observedGeneration"] as? Int ?? 0
        guard generation <= observed else { return .progressing("Waiting for deployment spec update to be observed...") }
        let conditions = status["conditions"] as? [[String: Any]] ?? []
        if let progressing = conditions.first(where: { $0["type"] as? String == "Progressing" }),
           progressing["reason"] as? String == "ProgressDeadlineExceeded" {
            return .failed("deployment \"\(name)\" exceeded its progress deadline\((progressing["message"] as? String).map { ": \($0)" } ?? "")")
        }
        let wanted = spec["replicas"] as? Int ?? 1
        let replicas = status["replicas"] as? Int ?? 0
        let updated = status["updatedReplicas"] as? Int ?? 0
        let available = status["availableReplicas"] as? Int ?? 0
        if updated < wanted {
            return .progressing("Waiting for deployment \"\(name)\" rollout to finish: \(updated) out of \(wanted) new replicas have been updated...")
        }
        if replicas > updated {
            return .progressing("Waiting for deployment \"\(name)\" rollout to finish: \(replicas - updated) old replicas are pending termination...")
        }
        if available < updated {
            return .progressing("Waiting for deployment \"\(name)\" rollout to finish: \(available) of \(updated) updated replicas are available...")
        }
        return .complete("deployment \"\(name)\" successfully rolled out")
    }

    public struct Pod: Sendable, Equatable {
        public var name: String
        public var status: RunningStatus
        /// Why, when it is not simply running (CrashLoopBackOff, ImagePullBackOff, …, with the
        /// kubelet's message).
        public var reason: String
        public var restarts: Int
        /// How the container's previous run ended ("exited with status 137 (OOMKilled)").
        public var lastExit: String?
        public var oomKilled: Bool
    }

    /// A pod of a workload (its first container: the service's).
    public static func pod(_ pod: [String: Any]) -> Pod {
        let metadata = pod["metadata"] as? [String: Any] ?? [:]
        let status = pod["status"] as? [String: Any] ?? [:]
        let container = (status["containerStatuses"] as? [[String: Any]])?.first ?? [:]
        let state = container["state"] as? [String: Any] ?? [:]
        var result = Pod(
            name: metadata["name"] as? String ?? "?", status: .starting, reason: "", restarts: container["restartCount"] as? Int ?? 0,
            lastExit: nil, oomKilled: false)
        for exit in [(container["lastState"] as? [String: Any])?["terminated"], state["terminated"]].compactMap({ $0 as? [String: Any] }) {
            let reason = exit["reason"] as? String
            result.lastExit = "exited with status \(exit["exitCode"] as? Int ?? -1)\(reason.map { " (\($0))" } ?? "")"
            result.oomKilled = reason == "OOMKilled"
        }
        if metadata["deletionTimestamp"] != nil {
            result.status = .stopping
        } else if let waiting = state["waiting"] as? [String: Any] {
            let reason = waiting["reason"] as? String ?? "Waiting"
            result.reason = reason + ((waiting["message"] as? String).map { ": \($0)" } ?? "")
            result.status = ["ContainerCreating", "PodInitializing"].contains(reason) ? .starting : .error
        } else if state["running"] != nil {
            result.status = container["ready"] as? Bool == true ? .running : .starting
        } else if state["terminated"] != nil {
            result.status = status["phase"] as? String == "Succeeded" ? .stopped : .error
        } else {
            result.status = status["phase"] as? String == "Pending" ? .starting : .error
            result.reason = status["reason"] as? String ?? ""
        }
        return result
    }

    /// A workload from its pods: RUNNING when all run, WARNING when some do, ERROR when none does
    /// and some are in error, STARTING otherwise; STOPPED without pods.
    public static func workload(_ pods: [Pod]) -> RunningStatus {
        guard !pods.isEmpty else { return .stopped }
        let running = pods.filter { $0.status == .running }.count
        if running == pods.count { return .running }
        if running > 0 { return .warning }
        if pods.contains(where: { $0.status == .error }) { return .error }
        if pods.allSatisfy({ $0.status == .stopping }) { return .stopping }
        return .starting
    }
}
