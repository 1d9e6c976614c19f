import Foundation
import SlipwayProtos
import SlipwayRegistry
import SlipwayRPC
import SlipwayServiceKit

/// Between the model and `slipway.pipeline.v1` messages, with the validation a request gets: every
/// refusal names the field and what would be accepted.
enum Proto {
    typealias Config = Slipway_Pipeline_V1_ServiceConfig

    static func invalid(_ message: String) -> RPCError { RPCError(.invalidArgument, message) }

    // MARK: Names

    /// Organization, project and environment names: 1-100 characters of at most 400 bytes, no
    /// control or Unicode format characters (a right-to-left override would make one name read as
    /// another's).
    static func checkName(_ name: String, _ field: String) throws(RPCError) {
        guard !name.isEmpty, name.count <= 100, name.utf8.count <= Limits.nameBytes, InputGrammar.isDisplayText(name) else {
            throw invalid("\(field) must be 1 to 100 printable characters (at most \(Limits.nameBytes) bytes), got \"\(name.prefix(120))\"")
        }
    }

    /// Service names become DNS labels (`<service>-<environment>.<domain>`) and the cluster's
    /// instance names, which allow \(Limits.serviceNameBytes).
    static func checkServiceName(_ name: String) throws(RPCError) {
        guard name.utf8.count <= Limits.serviceNameBytes, InputGrammar.isDNSLabel(name), name.first!.isLetter else {
            throw invalid(
                "name must be a DNS label: 1 to \(Limits.serviceNameBytes) lower-case letters, digits and '-', starting with a letter, not ending with '-'; got \"\(name.prefix(80))\"")
        }
    }

    static func checkID(_ id: String, _ field: String) throws(RPCError) {
        guard !id.isEmpty else { throw invalid("\(field) is required") }
        guard id.utf8.count <= 128 else { throw invalid("\(field) is longer than 128 characters") }
    }

    static func checkVariableName(_ name: String, _ field: String) throws(RPCError) {
        let bytes = Array(name.utf8)
        let valid = !bytes.isEmpty && bytes.count <= 256 && !(bytes[0] >= 48 && bytes[0] <= 57)
            && bytes.allSatisfy { ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 }
        guard valid else { throw invalid("\(field) name \"\(name.prefix(80))\" must be letters, digits and '_', not starting with a digit, at most 256") }
    }

    // MARK: Service configuration

    static func spec(_ config: Config?) throws(RPCError) -> ServiceSpec {
        guard let config else { throw invalid("config is required") }
        var spec: ServiceSpec
        switch config.source {
        case .application(let git)?:
            guard !git.url.isEmpty else { throw invalid("config.application.url is required") }
            // The builder decides which transports and hosts it fetches from; here, the shape.
            guard git.url.utf8.count <= Limits.urlBytes, !git.url.hasPrefix("-"), InputGrammar.hasNoSpaceOrControl(git.url) else {
                throw invalid("config.application.url must be a repository URL of at most \(Limits.urlBytes) bytes without spaces or control characters")
            }
            guard git.branch.isEmpty || InputGrammar.isGitRefName(git.branch) else {
                throw invalid("config.application.branch \"\(git.branch.prefix(80))\" is not a branch name git accepts")
            }
            for (field, path) in [("root_path", git.rootPath), ("dockerfile_path", git.dockerfilePath)] where !InputGrammar.isRelativePath(path, maxBytes: Limits.pathBytes) {
                throw invalid("config.application.\(field) \"\(path.prefix(80))\" must be a path inside the repository (relative, without .., at most \(Limits.pathBytes) bytes)")
            }
            try checkPairs(git.buildArgs, "config.application.build_args", count: Limits.buildArgs, bytes: Limits.buildArgBytes)
            var source = ServiceSpec.GitSource(url: git.url, branch: git.branch.isEmpty ? "main" : git.branch)
            source.rootPath = git.rootPath
            source.dockerfilePath = git.dockerfilePath.isEmpty ? "Dockerfile" : git.dockerfilePath
            source.buildArgs = git.buildArgs
            switch git.buildNetwork {
            case .unspecified: source.buildNetwork = nil
            case .nat: source.buildNetwork = .nat
            case .none: source.buildNetwork = ServiceSpec.GitSource.BuildNetwork.none
            default: throw invalid("config.application.build_network: unknown value \(git.buildNetwork); BUILD_NETWORK_NAT, BUILD_NETWORK_NONE or unset")
            }
            spec = ServiceSpec(source: .application(source))
        case .container(let container)?:
            guard !container.image.isEmpty else { throw invalid("config.container.image is required") }
            guard container.image.utf8.count <= Limits.imageBytes, let reference = ImageReference(parsing: container.image), reference.digest == nil,
                !container.image.dropFirst(reference.host == "docker.io" ? 0 : reference.host.count).contains(":")
            else {
                throw invalid("config.container.image \"\(container.image.prefix(120))\" must be [host[:port]/]name without a tag (give it as config.container.tag), e.g. ghcr.io/acme/web")
            }
            guard container.tag.isEmpty || ImageReference.isValidTag(container.tag) else {
                throw invalid("config.container.tag \"\(container.tag.prefix(140))\" must be 1-128 of letters, digits, '_', '.' and '-', not starting with '.' or '-'")
            }
            spec = ServiceSpec(source: .container(image: container.image, tag: container.tag.isEmpty ? "latest" : container.tag))
        case nil:
            throw invalid("config needs a source: application (git) or container (image)")
        }
        for (index, port) in config.ports.enumerated() {
            guard (1...65535).contains(port.internalPort) else { throw invalid("config.ports[\(index)].internal_port must be 1 to 65535, got \(port.internalPort)") }
            let kind: ServiceSpec.Port.Kind = switch port.protocol {
            case .grpc: .grpc
            case .tcp: .tcp
            default: .http
            }
            spec.ports.append(.init(internalPort: Int(port.internalPort), isPublic: port.public, kind: kind))
        }
        try checkPairs(config.environmentVariables, "config.environment_variables", count: Limits.environmentVariables, bytes: Limits.environmentBytes)
        spec.environmentVariables = config.environmentVariables
        guard config.replicas <= Limits.replicas else { throw invalid("config.replicas must be at most \(Limits.replicas), got \(config.replicas)") }
        spec.replicas = config.replicas == 0 ? 1 : Int(config.replicas)
        guard config.cpuMillicores <= 64_000 else { throw invalid("config.cpu_millicores must be at most 64000") }
        if config.cpuMillicores > 0 { spec.cpuMillicores = Int(config.cpuMillicores) }
        guard config.memoryMib <= 1_048_576 else { throw invalid("config.memory_mib must be at most 1048576") }
        if config.memoryMib > 0 { spec.memoryMiB = Int(config.memoryMib) }
        spec.readinessProbe = try config.readinessProbe.map { probe throws(RPCError) in try self.probe(probe, "config.readiness_probe") }
        spec.livenessProbe = try config.livenessProbe.map { probe throws(RPCError) in try self.probe(probe, "config.liveness_probe") }
        guard config.customDomains.count <= Limits.customDomains else {
            throw invalid("config.custom_domains holds \(config.customDomains.count) names; at most \(Limits.customDomains) per service")
        }
        // DNS names compare without case: kept lowercase (a configuration saved before held any case).
        let domains = config.customDomains.map { $0.lowercased() }
        for domain in domains where !InputGrammar.isDomainName(domain) {
            throw invalid("config.custom_domains: \"\(domain.prefix(80))\" is not a domain name (labels of a-z, 0-9 and '-', e.g. shop.example.com)")
        }
        spec.customDomains = domains
        if let auto = config.autoDeploy {
            for (field, entries) in [("branches", auto.branches), ("paths", auto.paths)] where entries.count > Limits.autoDeployEntries {
                throw invalid("config.auto_deploy.\(field) holds \(entries.count) entries; at most \(Limits.autoDeployEntries)")
            }
            for branch in auto.branches where !InputGrammar.isGitRefName(branch) {
                throw invalid("config.auto_deploy.branches: \"\(branch.prefix(80))\" is not a branch name git accepts")
            }
            for path in auto.paths where path.isEmpty || !InputGrammar.isRelativePath(path, maxBytes: Limits.autoDeployPathBytes) {
                throw invalid("config.auto_deploy.paths: \"\(path.prefix(80))\" must be a path in the repository (relative, without .., at most \(Limits.autoDeployPathBytes) bytes)")
            }
            spec.autoDeploy = .init(enabled: auto.enabled, branches: auto.branches, paths: auto.paths)
        }
        guard config.stage <= 100 else { throw invalid("config.stage must be at most 100, got \(config.stage)") }
        spec.stage = Int(config.stage)
        return spec
    }

    /// Bounds of a service's configuration (docs/limits.md, Pipeline). Sized so that a service
    /// message stays far below the RPC layer's 4 MiB and a release (which copies it) stays small.
    enum Limits {
        /// A probe's initial delay, period and timeout.
        static let probeSeconds: UInt32 = 3600
        /// A probe's failure and success thresholds.
        static let probeThreshold: UInt32 = 100
        /// initial_delay + failure_threshold × period: how long an instance may take to be ready,
        /// the cluster's own bound.
        static let readyWindowSeconds = 86_400
        static let probePathBytes = 1024
        static let grpcServiceBytes = 256
        static let execArguments = 64
        static let execArgumentBytes = 4096
        /// Kubernetes' bound; the local driver runs at most 50 and says so at deploy.
        static let replicas: UInt32 = 100
        /// The cluster names instances after the service.
        static let serviceNameBytes = 40
        static let nameBytes = 400
        static let urlBytes = 2048
        static let pathBytes = 1024
        static let buildArgs = 100
        /// Names and values together.
        static let buildArgBytes = 16 * 1024
        static let environmentVariables = 1000
        /// Names and values together (secrets have their own 64 KiB).
        static let environmentBytes = 32 * 1024
        static let customDomains = 20
        static let autoDeployEntries = 50
        static let autoDeployPathBytes = 255
        static let imageBytes = 512
    }

    /// Variables and build arguments: names of letters, digits and '_', values without NUL, at most
    /// `count` pairs and `bytes` in all.
    static func checkPairs(_ pairs: [String: String], _ field: String, count: Int, bytes: Int) throws(RPCError) {
        guard pairs.count <= count else { throw invalid("\(field) holds \(pairs.count) entries; at most \(count)") }
        var total = 0
        for (name, value) in pairs {
            try checkVariableName(name, field)
            guard !value.utf8.contains(0) else { throw invalid("\(field): the value of \(name) contains a NUL byte") }
            total += name.utf8.count + value.utf8.count
        }
        guard total <= bytes else { throw invalid("\(field) hold \(total) bytes; at most \(bytes) per service (names and values)") }
    }

    static func probe(_ probe: Slipway_Pipeline_V1_Probe, _ field: String) throws(RPCError) -> ServiceSpec.Probe {
        let kind: ServiceSpec.Probe.Kind
        switch probe.kind {
        case .http(let http)?:
            guard http.path.isEmpty || (http.path.hasPrefix("/") && http.path.utf8.count <= Limits.probePathBytes
                && !http.path.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7f }))
            else {
                throw invalid("\(field).http.path must start with '/', without spaces or control characters, at most \(Limits.probePathBytes) bytes")
            }
            try probePort(http.port, "\(field).http.port")
            kind = .http(path: http.path.isEmpty ? "/" : http.path, port: Int(http.port))
        case .tcp(let tcp)?:
            try probePort(tcp.port, "\(field).tcp.port")
            kind = .tcp(port: Int(tcp.port))
        case .grpc(let grpc)?:
            try probePort(grpc.port, "\(field).grpc.port")
            guard grpc.service.utf8.count <= Limits.grpcServiceBytes, InputGrammar.hasNoControlCharacters(grpc.service), !grpc.service.contains(" ") else {
                throw invalid("\(field).grpc.service must be a service name of at most \(Limits.grpcServiceBytes) bytes")
            }
            kind = .grpc(port: Int(grpc.port), service: grpc.service)
        case .exec(let exec)?:
            guard !exec.command.isEmpty else { throw invalid("\(field).exec.command is empty") }
            guard exec.command.count <= Limits.execArguments, exec.command.allSatisfy({ $0.utf8.count <= Limits.execArgumentBytes && !$0.utf8.contains(0) }) else {
                throw invalid("\(field).exec.command must be 1 to \(Limits.execArguments) arguments of at most \(Limits.execArgumentBytes) bytes, without NUL")
            }
            kind = .exec(command: exec.command)
        case nil: throw invalid("\(field) needs a kind: http, tcp, grpc or exec")
        }
        for (name, value, limit) in [("initial_delay_seconds", probe.initialDelaySeconds, Limits.probeSeconds), ("period_seconds", probe.periodSeconds, Limits.probeSeconds),
                                     ("timeout_seconds", probe.timeoutSeconds, Limits.probeSeconds), ("failure_threshold", probe.failureThreshold, Limits.probeThreshold),
                                     ("success_threshold", probe.successThreshold, Limits.probeThreshold)] where value > limit {
            throw invalid("\(field).\(name) must be at most \(limit), got \(value)")
        }
        var result = ServiceSpec.Probe(kind: kind)
        result.initialDelaySeconds = Int(probe.initialDelaySeconds)
        if probe.periodSeconds > 0 { result.periodSeconds = Int(probe.periodSeconds) }
        if probe.timeoutSeconds > 0 { result.timeoutSeconds = Int(probe.timeoutSeconds) }
        if probe.failureThreshold > 0 { result.failureThreshold = Int(probe.failureThreshold) }
        if probe.successThreshold > 0 { result.successThreshold = Int(probe.successThreshold) }
        let window = result.initialDelaySeconds + result.failureThreshold * result.periodSeconds
        guard window <= Limits.readyWindowSeconds else {
            throw invalid(
                "\(field): initial_delay_seconds + failure_threshold × period_seconds is \(window) s; at most \(Limits.readyWindowSeconds) (a day)")
        }
        return result
    }

    /// 0 (the service's first port) or a port number.
    static func probePort(_ port: UInt32, _ field: String) throws(RPCError) {
        guard port <= 65535 else { throw invalid("\(field) must be 0 (the service's first port) or 1 to 65535, got \(port)") }
    }

    static func config(_ spec: ServiceSpec) -> Config {
        var config = Config()
        switch spec.source {
        case .application(let source):
            var git = Slipway_Pipeline_V1_GitSource()
            git.url = source.url
            git.branch = source.branch
            git.rootPath = source.rootPath
            git.dockerfilePath = source.dockerfilePath
            git.buildArgs = source.buildArgs
            switch source.buildNetwork {
            case nil: git.buildNetwork = .unspecified
            case .nat?: git.buildNetwork = .nat
            case .none?: git.buildNetwork = .none
            }
            config.source = .application(git)
        case .container(let image, let tag):
            var container = Slipway_Pipeline_V1_ContainerSource()
            container.image = image
            container.tag = tag
            config.source = .container(container)
        }
        config.ports = spec.ports.map { port in
            var message = Slipway_Pipeline_V1_Port()
            message.internalPort = UInt32(port.internalPort)
            message.public = port.isPublic
            message.protocol = switch port.kind {
            case .http: .http
            case .grpc: .grpc
            case .tcp: .tcp
            }
            return message
        }
        config.environmentVariables = spec.environmentVariables
        config.replicas = UInt32(spec.replicas)
        config.cpuMillicores = UInt32(spec.cpuMillicores)
        config.memoryMib = UInt32(spec.memoryMiB)
        config.readinessProbe = spec.readinessProbe.map(probe)
        config.livenessProbe = spec.livenessProbe.map(probe)
        config.customDomains = spec.customDomains
        var auto = Slipway_Pipeline_V1_AutoDeploy()
        auto.enabled = spec.autoDeploy.enabled
        auto.branches = spec.autoDeploy.branches
        auto.paths = spec.autoDeploy.paths
        config.autoDeploy = auto
        config.stage = UInt32(spec.stage)
        return config
    }

    static func probe(_ probe: ServiceSpec.Probe) -> Slipway_Pipeline_V1_Probe {
        var message = Slipway_Pipeline_V1_Probe()
        switch probe.kind {
        case .http(let path, let port):
            var http = Slipway_Pipeline_V1_HttpProbe()
            http.path = path
            http.port = UInt32(port)
            message.kind = .http(http)
        case .tcp(let port):
            var tcp = Slipway_Pipeline_V1_TcpProbe()
            tcp.port = UInt32(port)
            message.kind = .tcp(tcp)
        case .grpc(let port, let service):
            var grpc = Slipway_Pipeline_V1_GrpcProbe()
            grpc.port = UInt32(port)
            grpc.service = service
            message.kind = .grpc(grpc)
        case .exec(let command):
            var exec = Slipway_Pipeline_V1_ExecProbe()
            exec.command = command
            message.kind = .exec(exec)
        }
        message.initialDelaySeconds = UInt32(probe.initialDelaySeconds)
        message.periodSeconds = UInt32(probe.periodSeconds)
        message.timeoutSeconds = UInt32(probe.timeoutSeconds)
        message.failureThreshold = UInt32(probe.failureThreshold)
        message.successThreshold = UInt32(probe.successThreshold)
        return message
    }

    static func service(_ service: ManagedService, state: PipelineStore.ServiceState?) -> Slipway_Pipeline_V1_Service {
        var message = Slipway_Pipeline_V1_Service()
        message.id = service.id
        message.environmentId = service.environmentID
        message.name = service.name
        message.config = config(service.configuration)
        message.secretNames = service.secrets.keys.sorted()
        message.domainLabel = service.domainLabel
        message.deploymentStatus = state?.deploymentStatus.map(status) ?? .deploymentStatusUnspecified
        message.runningStatus = state?.runningStatus.map(running) ?? .runningStatusUnspecified
        return message
    }

    // MARK: Enums

    static func status(_ status: DeploymentStatus) -> Slipway_Pipeline_V1_DeploymentStatus {
        let index = DeploymentStatus.allCases.firstIndex(of: status)!
        return Slipway_Pipeline_V1_DeploymentStatus(rawValue: Int32(index + 1))
    }

    static func running(_ status: RunningStatus) -> Slipway_Pipeline_V1_RunningStatus {
        Slipway_Pipeline_V1_RunningStatus(rawValue: Int32(RunningStatus.allCases.firstIndex(of: status)! + 1))
    }

    static func action(_ action: ServiceAction) -> Slipway_Pipeline_V1_Action {
        Slipway_Pipeline_V1_Action(rawValue: Int32(ServiceAction.allCases.firstIndex(of: action)! + 1))
    }

    static func action(_ action: Slipway_Pipeline_V1_Action) -> ServiceAction? {
        let index = Int(action.rawValue) - 1
        return ServiceAction.allCases.indices.contains(index) ? ServiceAction.allCases[index] : nil
    }

    static func origin(_ origin: DeploymentOrigin) -> Slipway_Pipeline_V1_Origin {
        Slipway_Pipeline_V1_Origin(rawValue: Int32(DeploymentOrigin.allCases.firstIndex(of: origin)! + 1))
    }

    static func origin(_ origin: Slipway_Pipeline_V1_Origin) -> DeploymentOrigin {
        let index = Int(origin.rawValue) - 1
        return DeploymentOrigin.allCases.indices.contains(index) ? DeploymentOrigin.allCases[index] : .api
    }

    static func step(_ step: PipelineStore.Step) -> Slipway_Pipeline_V1_Step {
        Slipway_Pipeline_V1_Step(rawValue: Int32(PipelineStore.Step.allCases.firstIndex(of: step)! + 1))
    }

    static func stepStatus(_ status: PipelineStore.StepStatus) -> Slipway_Pipeline_V1_StepStatus {
        switch status {
        case .running: .stepRunning
        case .succeeded: .stepSucceeded
        case .skipped: .stepSkipped
        case .failed: .stepFailed
        case .canceled: .stepCanceled
        }
    }

    static func millis(_ date: Date?) -> Int64 {
        date.map { Int64(($0.timeIntervalSince1970 * 1000).rounded()) } ?? 0
    }

    // MARK: Deployments

    static func deployment(_ record: PipelineStore.DeploymentRecord, steps: [PipelineStore.StepRecord]) -> Slipway_Pipeline_V1_Deployment {
        var message = Slipway_Pipeline_V1_Deployment()
        message.id = record.id
        message.environmentId = record.environmentID
        message.action = action(record.action)
        message.origin = origin(record.origin)
        message.triggeredBy = record.triggeredBy
        message.idempotencyKey = record.idempotencyKey ?? ""
        message.createdUnixMillis = millis(record.createdAt)
        message.startedUnixMillis = millis(record.startedAt)
        message.endedUnixMillis = millis(record.endedAt)
        message.rollbackReleaseId = record.rollbackReleaseID ?? ""
        if let rollup = StatusRollup.deployment(Array(record.services.values)) { message.status = status(rollup) }
        let byService = Dictionary(grouping: steps, by: \.serviceID)
        for (serviceID, serviceStatus) in record.services.sorted(by: { $0.key < $1.key }) {
            let detail = record.details[serviceID]
            var service = Slipway_Pipeline_V1_ServiceDeployment()
            service.serviceId = serviceID
            service.serviceName = detail?.name ?? ""
            service.stage = UInt32(detail?.stage ?? 0)
            service.requestedVersion = detail?.requestedVersion ?? ""
            service.commit = detail?.commit ?? ""
            service.image = detail?.image ?? ""
            service.releaseId = detail?.releaseID ?? ""
            service.status = status(serviceStatus)
            service.reason = record.reasons[serviceID] ?? ""
            service.steps = (byService[serviceID] ?? []).map(stepRecord)
            message.services.append(service)
        }
        // Stages in execution order, each spanning its services' steps.
        let stages = Dictionary(grouping: record.services.keys) { record.details[$0]?.stage ?? 0 }
        let reverse = record.action == .stop || record.action == .delete
        for (stage, serviceIDs) in stages.sorted(by: { reverse ? $0.key > $1.key : $0.key < $1.key }) {
            var message2 = Slipway_Pipeline_V1_StageRecord()
            message2.stage = UInt32(stage)
            if let rollup = StatusRollup.deployment(serviceIDs.compactMap { record.services[$0] }) { message2.status = status(rollup) }
            let stageSteps = serviceIDs.flatMap { byService[$0] ?? [] }
            if let start = stageSteps.map(\.startedAt).min() {
                message2.startedUnixMillis = millis(start)
                if stageSteps.allSatisfy({ $0.endedAt != nil }), let end = stageSteps.compactMap(\.endedAt).max() {
                    message2.durationMillis = millis(end) - millis(start)
                }
            }
            message.stages.append(message2)
        }
        return message
    }

    static func stepRecord(_ step: PipelineStore.StepRecord) -> Slipway_Pipeline_V1_StepRecord {
        var message = Slipway_Pipeline_V1_StepRecord()
        message.step = self.step(step.step)
        message.status = stepStatus(step.status)
        message.startedUnixMillis = millis(step.startedAt)
        message.durationMillis = step.endedAt.map { millis($0) - millis(step.startedAt) } ?? 0
        message.message = step.message
        message.interruptions = UInt32(clamping: step.interruptions)
        message.resumedUnixMillis = step.resumedAt.map(millis) ?? 0
        return message
    }

    static func release(_ release: PipelineStore.Release) -> Slipway_Pipeline_V1_Release {
        var message = Slipway_Pipeline_V1_Release()
        message.id = release.id
        message.serviceId = release.serviceID
        message.deploymentId = release.deploymentID
        message.createdUnixMillis = millis(release.createdAt)
        message.commit = release.commit
        message.image = release.image
        message.config = config(release.configuration)
        return message
    }

    static func event(_ event: PipelineEvent) -> Slipway_Pipeline_V1_StatusEvent {
        var message = Slipway_Pipeline_V1_StatusEvent()
        message.kind = switch event.kind {
        case .snapshot: .eventSnapshot
        case .snapshotEnd: .eventSnapshotEnd
        case .deploymentStatus: .eventDeploymentStatus
        case .step: .eventStep
        case .runningStatus: .eventRunningStatus
        case .deploymentEnded: .eventDeploymentEnded
        case .deploymentQueued: .eventDeploymentQueued
        }
        message.environmentId = event.environmentID
        message.deploymentId = event.deploymentID
        message.serviceId = event.serviceID
        message.deploymentStatus = event.deploymentStatus.map(status) ?? .deploymentStatusUnspecified
        message.runningStatus = event.runningStatus.map(running) ?? .runningStatusUnspecified
        message.step = event.step.map(step) ?? .stepUnspecified
        message.stepStatus = event.stepStatus.map(stepStatus) ?? .stepStatusUnspecified
        message.message = event.message
        message.unixMillis = millis(event.time)
        return message
    }
}
