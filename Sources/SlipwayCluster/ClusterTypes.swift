import Foundation

// What both cluster drivers (local and Kubernetes) and the RPC service speak in: workloads, what a
// deploy asks for, instances, running statuses and failures.

public struct Workload: Sendable, Equatable, Codable {
    public var environmentID: String
    public var serviceID: String
    public var serviceName: String

    public init(environmentID: String, serviceID: String, serviceName: String) {
        self.environmentID = environmentID
        self.serviceID = serviceID
        self.serviceName = serviceName
    }
}

/// A check of an instance, for readiness or liveness.
public enum Readiness: Sendable, Equatable, Codable {
    /// GET path answers 2xx or 3xx.
    case http(path: String)
    /// The port accepts connections.
    case tcp
    /// `grpc.health.v1.Health/Check` for `service` ("" = the server as a whole) answers SERVING.
    case grpc(service: String)
    /// The command, run inside the instance (`runc exec`), exits 0.
    case exec(command: [String])
}

/// How a deploy replaces the instances (Kubernetes' Deployment strategies).
public enum RolloutStrategy: Sendable, Equatable {
    /// At most replicas + `maxSurge` instances at once, at least replicas - `maxUnavailable`
    /// serving (absolute numbers).
    case rolling(maxSurge: Int, maxUnavailable: Int)
    /// Every old instance stops before the new ones start (nothing serves in between).
    case recreate
}

/// Kubernetes' liveness probe: checked every `period` once `initialDelay` has passed since the
/// instance started; after `failureThreshold` failures in a row it is killed and started again
/// (with the crash-loop backoff), its last exit saying why.
public struct Liveness: Sendable, Equatable, Codable {
    public var check: Readiness
    public var initialDelay: Double = 0
    public var period: Double = 10
    public var timeout: Double = 1
    public var failureThreshold = 3

    public init(check: Readiness) {
        self.check = check
    }
}

public struct DeploySpec: Sendable {
    public var workload: Workload
    public var image: String
    public var insecureRegistry = false
    public var environment: [String: String] = [:]
    public var replicas = 1
    public var cpuMillicores: Int?
    public var memoryMiB: Int?
    public var readiness: Readiness = .tcp
    public var checkPeriod: Duration = .milliseconds(100)
    public var checkTimeout: Duration = .seconds(1)
    public var readyTimeout: Duration = .seconds(60)
    public var stopGrace: Duration = .seconds(10)
    public var command: [String]?
    /// Reached through the load balancer: traffic moves to the new instances (and drains from
    /// the old ones) before the old ones stop.
    public var isPublic = false
    public var liveness: Liveness?
    /// Nil: every new instance at once, then the old ones go (a rolling update with max surge =
    /// replicas, max unavailable = 0).
    public var strategy: RolloutStrategy?

    public init(workload: Workload, image: String) {
        self.workload = workload
        self.image = image
    }
}

public struct Instance: Sendable, Equatable, Codable {
    public var id: String
    public var port: Int
    public var image: String
    /// Times the supervisor has started it again after it exited.
    public var restarts: Int? = nil
    /// When the supervisor saw it exited (Unix seconds), until it starts it again.
    public var exitedAt: Double? = nil
    /// How its last run ended, for a person: "exited with status 3", "killed by signal 9
    /// (OOMKilled: …)", or that the status could not be read.
    public var lastExit: String? = nil
    public var lastExitAt: Double? = nil
    /// Its last run was killed by the kernel for going over its memory limit.
    public var oomKilled: Bool? = nil
    /// When its current run started (Unix seconds; nil: at deploy, before this was recorded).
    public var startedAt: Double? = nil
    /// Exits in a row without a run of ``LocalCluster/healthyRun``: the backoff's exponent.
    public var crashes: Int? = nil
    /// Where it runs when not on this machine (a pod's IP); nil: loopback.
    public var host: String? = nil
    public var address: String { "\(host ?? "127.0.0.1"):\(port)" }

    /// When it will be started again: 1 s after its first exit, then 2, 4, … up to
    /// ``LocalCluster/maxBackoff`` (CrashLoopBackOff); back to 1 s after a run of 10 minutes.
    public var nextRestartAt: Double? {
        exitedAt.map { $0 + min(LocalCluster.maxBackoff, pow(2, Double(crashes ?? restarts ?? 0))) }
    }
}

public struct ClusterFailure: Error, CustomStringConvertible, Equatable {
    public enum Kind: Sendable { case invalid, notReady, runtime }
    public var kind: Kind
    public var description: String
}

public enum RunningStatus: String, Sendable, Equatable {
    case starting, running, warning, error, stopping, stopped
}

public struct InstanceStatus: Sendable, Equatable {
    public var instance: Instance
    public var running: Bool
    public var status: RunningStatus
}

public struct WorkloadStatus: Sendable, Equatable {
    public var workload: Workload
    public var status: RunningStatus
    public var instances: [InstanceStatus]
}
