import SlipwayProtos
import SlipwayRegistry
import SlipwayRPC

/// `slipway.cluster.v1.Cluster` over the local driver.
struct ClusterService: Slipway_Cluster_V1_Cluster.ServiceProtocol {
    let cluster: any ClusterDriver


    func deploy(request: Slipway_Cluster_V1_DeployRequest, context: ServerContext) async throws -> Slipway_Cluster_V1_DeployResponse {
        try Self.checkNumbers(request)
        try Self.checkContent(request)
        var spec = DeploySpec(workload: try Self.workload(request.workload), image: request.image)
        spec.insecureRegistry = request.insecureRegistry
        spec.environment = request.environment
        spec.replicas = request.replicas == 0 ? 1 : Int(request.replicas)
        if request.cpuMillicores > 0 { spec.cpuMillicores = Int(request.cpuMillicores) }
        if request.memoryMib > 0 { spec.memoryMiB = Int(request.memoryMib) }
        if let readiness = request.readiness {
            switch readiness.check {
            case .http(let http)?: spec.readiness = try Self.check(http: http)
            case .grpc(let grpc)?: spec.readiness = try Self.check(grpc: grpc)
            case .exec(let exec)?: spec.readiness = try Self.check(exec: exec, "readiness.exec")
            case .tcp?, nil: spec.readiness = .tcp
            }
            if readiness.periodMillis > 0 { spec.checkPeriod = .milliseconds(Int(readiness.periodMillis)) }
            if readiness.timeoutMillis > 0 { spec.checkTimeout = .milliseconds(Int(readiness.timeoutMillis)) }
        }
        if request.readyTimeoutSeconds > 0 { spec.readyTimeout = .seconds(Int(request.readyTimeoutSeconds)) }
        if request.stopGraceSeconds > 0 { spec.stopGrace = .seconds(Int(request.stopGraceSeconds)) }
        if !request.command.isEmpty { spec.command = request.command }
        spec.isPublic = request.public
        switch request.strategy?.kind {
        case .rolling(let rolling)?:
            guard rolling.maxSurge <= 50, rolling.maxUnavailable <= 50, rolling.maxSurge > 0 || rolling.maxUnavailable > 0 else {
                throw RPCError(.invalidArgument, "strategy.rolling: max_surge and max_unavailable are 0 to 50 and not both 0")
            }
            spec.strategy = .rolling(maxSurge: Int(rolling.maxSurge), maxUnavailable: Int(rolling.maxUnavailable))
        case .recreate?: spec.strategy = .recreate
        case nil: spec.strategy = nil
        }
        if let liveness = request.liveness {
            let check: Readiness
            switch liveness.check {
            case .http(let http)?: check = try Self.check(http: http)
            case .grpc(let grpc)?: check = try Self.check(grpc: grpc)
            case .exec(let exec)?: check = try Self.check(exec: exec, "liveness.exec")
            case .tcp?: check = .tcp
            case nil: throw RPCError(.invalidArgument, "liveness.check is required (http, tcp, grpc or exec)")
            }
            var probe = Liveness(check: check)
            probe.initialDelay = Double(liveness.initialDelaySeconds)
            if liveness.periodSeconds > 0 { probe.period = Double(liveness.periodSeconds) }
            if liveness.timeoutSeconds > 0 { probe.timeout = Double(liveness.timeoutSeconds) }
            if liveness.failureThreshold > 0 { probe.failureThreshold = Int(liveness.failureThreshold) }
            spec.liveness = probe
        }
        var response = Slipway_Cluster_V1_DeployResponse()
        response.instances = try await cluster.deploy(spec).map { Self.instance($0, running: true) }
        return response
    }

    /// Bounds of a deploy's numbers (docs/limits.md, Cluster): a larger one is a mistake, and no
    /// number may reach arithmetic that traps.
    enum Limits {
        static let cpuMillicores: UInt32 = 64_000
        static let memoryMiB: UInt32 = 1_048_576
        static let checkMillis: UInt32 = 3_600_000
        static let readyTimeoutSeconds: UInt32 = 86_400
        static let stopGraceSeconds: UInt32 = 3600
        static let livenessSeconds: UInt32 = 3600
        static let failureThreshold: UInt32 = 100
        /// Whichever driver; the local one runs at most 50 (it says so).
        static let replicas: UInt32 = 100
        static let imageBytes = 512
        /// Variables and secrets together, as the pipeline sends them.
        static let environmentVariables = 2000
        static let environmentBytes = 128 * 1024
        static let commandArguments = 64
        static let commandArgumentBytes = 4096
    }

    /// What reaches a process's environment and command line, or a manifest, as text.
    static func checkContent(_ request: Slipway_Cluster_V1_DeployRequest) throws(RPCError) {
        guard request.replicas <= Limits.replicas else {
            throw RPCError(.invalidArgument, "replicas must be at most \(Limits.replicas), got \(request.replicas)")
        }
        guard !request.image.isEmpty, request.image.utf8.count <= Limits.imageBytes, ImageReference(parsing: request.image) != nil else {
            throw RPCError(.invalidArgument, "image \"\(request.image.prefix(120))\" is not an image reference (host/name:tag or host/name@sha256:…, at most \(Limits.imageBytes) bytes)")
        }
        var bytes = 0
        for (name, value) in request.environment {
            let valid = !name.isEmpty && name.utf8.count <= 256 && !name.utf8.contains(where: { $0 == UInt8(ascii: "=") || $0 < 0x20 || $0 == 0x7f })
            guard valid, !value.utf8.contains(0) else {
                throw RPCError(.invalidArgument, "environment: \"\(name.prefix(80))\" must be a name without '=' or control characters and a value without NUL")
            }
            bytes += name.utf8.count + value.utf8.count
        }
        guard request.environment.count <= Limits.environmentVariables, bytes <= Limits.environmentBytes else {
            throw RPCError(.invalidArgument, "environment: at most \(Limits.environmentVariables) variables of \(Limits.environmentBytes) bytes in all (got \(request.environment.count), \(bytes) bytes)")
        }
        guard request.command.count <= Limits.commandArguments,
            request.command.allSatisfy({ $0.utf8.count <= Limits.commandArgumentBytes && !$0.utf8.contains(0) })
        else {
            throw RPCError(.invalidArgument, "command: at most \(Limits.commandArguments) arguments of \(Limits.commandArgumentBytes) bytes, without NUL")
        }
    }

    static func checkNumbers(_ request: Slipway_Cluster_V1_DeployRequest) throws(RPCError) {
        var numbers: [(String, UInt32, UInt32)] = [
            ("cpu_millicores", request.cpuMillicores, Limits.cpuMillicores), ("memory_mib", request.memoryMib, Limits.memoryMiB),
            ("ready_timeout_seconds", request.readyTimeoutSeconds, Limits.readyTimeoutSeconds),
            ("stop_grace_seconds", request.stopGraceSeconds, Limits.stopGraceSeconds),
        ]
        if let readiness = request.readiness {
            numbers += [("readiness.period_millis", readiness.periodMillis, Limits.checkMillis), ("readiness.timeout_millis", readiness.timeoutMillis, Limits.checkMillis)]
        }
        if let liveness = request.liveness {
            numbers += [
                ("liveness.initial_delay_seconds", liveness.initialDelaySeconds, Limits.livenessSeconds), ("liveness.period_seconds", liveness.periodSeconds, Limits.livenessSeconds),
                ("liveness.timeout_seconds", liveness.timeoutSeconds, Limits.livenessSeconds), ("liveness.failure_threshold", liveness.failureThreshold, Limits.failureThreshold),
            ]
        }
        for (name, value, limit) in numbers where value > limit {
            throw RPCError(.invalidArgument, "\(name) must be at most \(limit), got \(value)")
        }
    }

    func stop(request: Slipway_Cluster_V1_WorkloadRequest, context: ServerContext) async throws -> Slipway_Cluster_V1_InstancesResponse {
        let stopped = try await cluster.stop(try Self.workload(request.workload), grace: Self.grace(request))
        var response = Slipway_Cluster_V1_InstancesResponse()
        response.instances = stopped.map { Self.instance($0, running: false) }
        return response
    }

    func delete(request: Slipway_Cluster_V1_WorkloadRequest, context: ServerContext) async throws -> Slipway_Cluster_V1_InstancesResponse {
        let deleted = try await cluster.delete(try Self.workload(request.workload), grace: Self.grace(request))
        var response = Slipway_Cluster_V1_InstancesResponse()
        response.instances = deleted.map { Self.instance($0, running: false) }
        return response
    }

    func watch(request: Slipway_Cluster_V1_WatchRequest, response writer: ResponseWriter<Slipway_Cluster_V1_WatchEvent>, context: ServerContext) async throws {
        // Subscribed before the snapshot is read: no change falls between the two.
        let (id, changes) = await cluster.watch()
        defer { Task { await cluster.unwatch(id) } }
        let wanted = { (status: WorkloadStatus) in
            request.environmentId.isEmpty || status.workload.environmentID == request.environmentId
        }
        for status in await cluster.statuses() where wanted(status) {
            var event = Slipway_Cluster_V1_WatchEvent()
            event.event = .workload(Self.workloadStatus(status))
            try await writer.write(event)
        }
        var end = Slipway_Cluster_V1_WatchEvent()
        end.event = .snapshotEnd(true)
        try await writer.write(end)
        for await status in changes where wanted(status) {
            var event = Slipway_Cluster_V1_WatchEvent()
            event.event = .workload(Self.workloadStatus(status))
            try await writer.write(event)
        }
    }

    func listInstances(request: Slipway_Cluster_V1_WorkloadRequest, context: ServerContext) async throws -> Slipway_Cluster_V1_InstancesResponse {
        let instances = try await cluster.instances(try Self.workload(request.workload))
        var response = Slipway_Cluster_V1_InstancesResponse()
        response.instances = instances.map { Self.instance($0.0, running: $0.running) }
        return response
    }

    static func check(http: Slipway_Cluster_V1_HttpCheck) throws -> Readiness {
        let path = http.path.isEmpty ? "/" : http.path
        // It goes into a request line: no spaces or control characters.
        guard path.hasPrefix("/"), path.utf8.count <= 1024, path.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            throw RPCError(.invalidArgument, "http.path must start with '/' and hold no spaces or control characters (at most 1 KiB)")
        }
        return .http(path: path)
    }

    static func check(grpc: Slipway_Cluster_V1_GrpcCheck) throws -> Readiness {
        guard grpc.service.utf8.count <= 256 else { throw RPCError(.invalidArgument, "grpc.service must be at most 256 bytes") }
        return .grpc(service: grpc.service)
    }

    static func check(exec: Slipway_Cluster_V1_ExecCheck, _ field: String) throws -> Readiness {
        guard !exec.command.isEmpty, exec.command.count <= 64, exec.command.allSatisfy({ $0.utf8.count <= 4096 }) else {
            throw RPCError(.invalidArgument, "\(field).command must have 1 to 64 arguments of at most 4 KiB")
        }
        return .exec(command: exec.command)
    }

    /// At most ``Limits/stopGraceSeconds`` (a longer grace is cut to it).
    static func grace(_ request: Slipway_Cluster_V1_WorkloadRequest) -> Duration {
        request.stopGraceSeconds == 0 ? .seconds(10) : .seconds(Int(min(request.stopGraceSeconds, Limits.stopGraceSeconds)))
    }

    static func workload(_ message: Slipway_Cluster_V1_Workload?) throws(ClusterFailure) -> Workload {
        guard let message else { throw ClusterFailure(kind: .invalid, description: "workload is required") }
        let workload = Workload(environmentID: message.environmentId, serviceID: message.serviceId, serviceName: message.serviceName)
        // At the boundary, whichever driver runs: names reach paths, label selectors and manifests.
        try LocalCluster.validate(workload)
        return workload
    }

    static func workloadStatus(_ status: WorkloadStatus) -> Slipway_Cluster_V1_WorkloadStatus {
        var message = Slipway_Cluster_V1_WorkloadStatus()
        var workload = Slipway_Cluster_V1_Workload()
        workload.environmentId = status.workload.environmentID
        workload.serviceId = status.workload.serviceID
        workload.serviceName = status.workload.serviceName
        message.workload = workload
        message.status = runningStatus(status.status)
        message.instances = status.instances.map { instance(status: $0) }
        return message
    }

    static func runningStatus(_ status: RunningStatus) -> Slipway_Cluster_V1_RunningStatus {
        switch status {
        case .starting: .starting
        case .running: .running
        case .warning: .warning
        case .error: .error
        case .stopping: .stopping
        case .stopped: .stopped
        }
    }

    static func instance(status: InstanceStatus) -> Slipway_Cluster_V1_Instance {
        var message = instance(status.instance, running: status.running)
        message.runningStatus = runningStatus(status.status)
        return message
    }

    static func instance(_ instance: Instance, running: Bool) -> Slipway_Cluster_V1_Instance {
        var message = Slipway_Cluster_V1_Instance()
        message.id = instance.id
        message.address = instance.address
        message.image = instance.image
        message.status = running ? .instanceRunning : .instanceStopped
        message.restarts = UInt32(instance.restarts ?? 0)
        message.nextRestartUnixMillis = instance.nextRestartAt.map { Int64($0 * 1000) } ?? 0
        message.lastExit = instance.lastExit ?? ""
        message.lastExitUnixMillis = instance.lastExitAt.map { Int64($0 * 1000) } ?? 0
        message.oomKilled = instance.oomKilled ?? false
        message.runningStatus = running ? .running : (instance.exitedAt != nil ? .error : .stopped)
        return message
    }
}

extension ClusterFailure: RPCErrorConvertible {
    public var rpcError: RPCError {
        switch kind {
        case .invalid: RPCError(.invalidArgument, description)
        case .notReady: RPCError(.failedPrecondition, description)
        case .runtime: RPCError(.internal, description)
        }
    }
}

extension KubernetesError: RPCErrorConvertible {
    /// The API server's answer, as it gave it.
    public var rpcError: RPCError {
        switch code {
        case 400, 422: RPCError(.invalidArgument, "Kubernetes: \(self)")
        case 403, 401: RPCError(.permissionDenied, "Kubernetes: \(self)")
        case 404: RPCError(.notFound, "Kubernetes: \(self)")
        case 409: RPCError(.failedPrecondition, "Kubernetes: \(self)")
        default: RPCError(.unavailable, "Kubernetes: \(self)")
        }
    }
}
