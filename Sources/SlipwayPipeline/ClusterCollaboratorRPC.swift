import SlipwayProtos
import SlipwayRPC

/// The cluster service over its RPC API (`slipway.cluster.v1.Cluster`). A restart deploys the image
/// the workload runs again (new instances, then the old ones stop); a rollback deploys the previous
/// release's image, or deletes the workload when there was none.
public struct ClusterCollaboratorRPC: ClusterCollaborator {
    typealias API = Slipway_Cluster_V1_Cluster

    let client: API.Client

    public init(client: RPCClient) {
        self.client = API.Client(wrapping: client)
    }

    public func deploy(_ work: ServiceWork, image: String) async throws -> RunningStatus {
        _ = try await stepCall("slipway-cluster") { try await client.deploy(request(work, image: image)) }
        return .running
    }

    public func rollBack(_ work: ServiceWork, to previous: PipelineStore.Release?) async throws -> RunningStatus? {
        guard let previous else {
            try await delete(work)
            return nil
        }
        var rolledBack = work
        rolledBack.service.configuration = previous.configuration
        rolledBack.service.secrets = previous.secrets
        return try await deploy(rolledBack, image: previous.image)
    }

    public func restart(_ work: ServiceWork) async throws -> RunningStatus {
        let instances = try await stepCall("slipway-cluster") { try await client.listInstances(workloadRequest(work)) }.instances
        guard let image = instances.first?.image else {
            throw StepFailure("\(work.service.name) has no instances to restart; deploy it first")
        }
        return try await deploy(work, image: image)
    }

    public func stop(_ work: ServiceWork) async throws -> RunningStatus {
        _ = try await stepCall("slipway-cluster") { try await client.stop(workloadRequest(work)) }
        return .stopped
    }

    public func delete(_ work: ServiceWork) async throws {
        _ = try await stepCall("slipway-cluster") { try await client.delete(workloadRequest(work)) }
    }

    func workload(_ work: ServiceWork) -> Slipway_Cluster_V1_Workload {
        var workload = Slipway_Cluster_V1_Workload()
        workload.environmentId = work.environment.id
        workload.serviceId = work.service.id
        workload.serviceName = work.service.name
        return workload
    }

    func workloadRequest(_ work: ServiceWork) -> Slipway_Cluster_V1_WorkloadRequest {
        var request = Slipway_Cluster_V1_WorkloadRequest()
        request.workload = workload(work)
        return request
    }

    func request(_ work: ServiceWork, image: String) -> Slipway_Cluster_V1_DeployRequest {
        let configuration = work.service.configuration
        var request = Slipway_Cluster_V1_DeployRequest()
        request.workload = workload(work)
        request.image = image
        request.environment = configuration.environmentVariables.merging(work.service.secrets) { $1 }
        request.replicas = UInt32(clamping: configuration.replicas)
        request.cpuMillicores = UInt32(clamping: configuration.cpuMillicores)
        request.memoryMib = UInt32(clamping: configuration.memoryMiB)
        var readiness = Slipway_Cluster_V1_Readiness()
        if let probe = configuration.readinessProbe {
            readiness.check = Self.check(probe.kind, http: { .http($0) }, tcp: { .tcp($0) }, grpc: { .grpc($0) }, exec: { .exec($0) })
            // Saturating: a configuration stored before its numbers were bounded must not trap here.
            readiness.timeoutMillis = Self.clamped(Double(probe.timeoutSeconds) * 1000)
            // Ready within the probe's own patience: its initial delay plus failureThreshold periods.
            request.readyTimeoutSeconds = Self.clamped(max(5, Double(probe.initialDelaySeconds) + Double(probe.failureThreshold) * Double(probe.periodSeconds)))
        }
        request.readiness = readiness
        request.public = work.isPublic
        if let probe = configuration.livenessProbe {
            var liveness = Slipway_Cluster_V1_Liveness()
            liveness.check = Self.check(probe.kind, http: { .http($0) }, tcp: { .tcp($0) }, grpc: { .grpc($0) }, exec: { .exec($0) })
            liveness.initialDelaySeconds = UInt32(clamping: probe.initialDelaySeconds)
            liveness.periodSeconds = UInt32(clamping: probe.periodSeconds)
            liveness.timeoutSeconds = UInt32(clamping: probe.timeoutSeconds)
            liveness.failureThreshold = UInt32(clamping: probe.failureThreshold)
            request.liveness = liveness
        }
        return request
    }

    /// `value` within 0...UInt32.max.
    static func clamped(_ value: Double) -> UInt32 {
        value >= Double(UInt32.max) ? UInt32.max : value <= 0 ? 0 : UInt32(value)
    }

    /// A probe of the service's configuration as the cluster's check (readiness and liveness have
    /// the same four kinds in their own oneofs).
    static func check<Check>(
        _ kind: ServiceSpec.Probe.Kind,
        http: (Slipway_Cluster_V1_HttpCheck) -> Check, tcp: (Slipway_Cluster_V1_TcpCheck) -> Check,
        grpc: (Slipway_Cluster_V1_GrpcCheck) -> Check, exec: (Slipway_Cluster_V1_ExecCheck) -> Check
    ) -> Check {
        switch kind {
        case .http(let path, _):
            var check = Slipway_Cluster_V1_HttpCheck()
            check.path = path
            return http(check)
        case .tcp:
            return tcp(Slipway_Cluster_V1_TcpCheck())
        case .grpc(_, let service):
            var check = Slipway_Cluster_V1_GrpcCheck()
            check.service = service
            return grpc(check)
        case .exec(let command):
            var check = Slipway_Cluster_V1_ExecCheck()
            check.command = command
            return exec(check)
        }
    }
}
