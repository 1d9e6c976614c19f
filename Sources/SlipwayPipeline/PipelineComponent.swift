import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import SlipwayRPC
import SlipwayServiceKit

/// The pipeline's own flags. Every limit has one; defaults are in docs/limits.md.
public struct PipelineOptions: ParsableArguments, Sendable {
    @Option(help: """
        Collaborators to simulate instead of calling, comma-separated: builder, cluster, network, certs, or none \
        (default: none).
        """)
    var pipelineSimulate: String?
    @Option(help: "How long each simulated step takes, in milliseconds (default 0).") var pipelineSimulatedStepMs: Int?
    @Option(help: "Services of one stage deployed at once (default 4).") var pipelineMaxParallel: Int?
    @Option(help: "Deployments that may wait per environment (default 100); beyond, RESOURCE_EXHAUSTED.") var pipelineMaxQueued: Int?
    @Option(help: "Seconds GIT_CLONE+BUILD or MIRROR_IMAGE may take (default 1800).") var pipelineBuildTimeout: Int?
    @Option(help: "Seconds any other step may take (default 600).") var pipelineStepTimeout: Int?
    @Option(help: "acknowledged (default: what a client was answered survives a power failure), normal (commits survive a killed process) or full (every commit is fsynced).")
    var pipelineDurability: String?
    @Option(help: "Finished deployments kept per service, with their steps (default 200); older ones are removed.") var pipelineKeepDeployments: Int?
    @Option(help: "Releases kept per service (default 50): how far back a rollback can go.") var pipelineKeepReleases: Int?
    @Option(help: "An organization quota, NAME=VALUE (repeatable): projects (50), environments (100), services (500), memory-mib (262144: replicas × memory), custom-domains (200), concurrent-builds (2).")
    var pipelineQuota: [String] = []

    public init() {}

    public func configuration() throws -> PipelineConfiguration {
        var configuration = PipelineConfiguration()
        if let simulate = pipelineSimulate {
            let names = simulate.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            let known = Set(PipelineConfiguration.Collaborator.allCases.map(\.rawValue))
            for name in names where name != "none" && !known.contains(name) {
                throw ValidationError("--pipeline-simulate: unknown collaborator \"\(name)\"; use builder, cluster, network, certs or none")
            }
            configuration.simulated = Set(names.compactMap(PipelineConfiguration.Collaborator.init(rawValue:)))
        }
        if let value = pipelineSimulatedStepMs {
            guard value >= 0 else { throw ValidationError("--pipeline-simulated-step-ms must be 0 or more") }
            configuration.simulatedStepDelay = .milliseconds(value)
        }
        if let value = try positiveOption(pipelineMaxParallel, "pipeline-max-parallel") { configuration.limits.maxParallelServices = value }
        if let value = try positiveOption(pipelineMaxQueued, "pipeline-max-queued") { configuration.limits.maxQueuedPerEnvironment = value }
        if let value = try positiveOption(pipelineBuildTimeout, "pipeline-build-timeout") { configuration.limits.buildTimeout = .seconds(value) }
        if let value = try positiveOption(pipelineStepTimeout, "pipeline-step-timeout") { configuration.limits.stepTimeout = .seconds(value) }
        if let value = try positiveOption(pipelineKeepDeployments, "pipeline-keep-deployments") { configuration.retention.deploymentsPerService = value }
        if let value = try positiveOption(pipelineKeepReleases, "pipeline-keep-releases") { configuration.retention.releasesPerService = value }
        for assignment in pipelineQuota {
            if let problem = configuration.quotas.set(assignment) { throw ValidationError(problem) }
        }
        if let value = pipelineDurability {
            guard let durability = PipelineStore.Durability(rawValue: value) else {
                throw ValidationError("--pipeline-durability must be acknowledged, normal or full, got \"\(value)\"")
            }
            configuration.durability = durability
        }
        return configuration
    }
}

public struct PipelineConfiguration: Sendable {
    public enum Collaborator: String, Sendable, CaseIterable {
        case builder, cluster, network, certs
    }

    /// Collaborators simulated instead of called (tests, the control-plane benchmark).
    public var simulated: Set<Collaborator> = []
    public var simulatedStepDelay: Duration = .zero
    public var limits = PipelineEngine.Limits()
    public var durability = PipelineStore.Durability.acknowledged
    public var retention = Retention()
    public var quotas = OrganizationQuotas()

    /// How much history is kept (`PipelineStore.prune`), checked at start and every `interval`.
    public struct Retention: Sendable {
        public var deploymentsPerService = 200
        public var releasesPerService = 50
        public var interval: Duration = .seconds(600)
        public init() {}
    }

    public init() {}
}

/// `slipway-pipeline`: projects, environments, services, deployments, releases, queue, stages, statuses, history, actions.
public struct PipelineComponent: PlatformComponent {
    let configuration: PipelineConfiguration

    public init(configuration: PipelineConfiguration = PipelineConfiguration()) {
        self.configuration = configuration
    }

    public func setUp(configuration service: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        let store = try PipelineStore(directory: try service.stateDirectory(), durability: configuration.durability, quotas: configuration.quotas)
        let simulated = SimulatedCollaborators(stepDelay: configuration.simulatedStepDelay)
        let images: any ImageCollaborator =
            configuration.simulated.contains(.builder) ? simulated : BuilderCollaborator(client: service.client(for: .builder))
        let cluster: any ClusterCollaborator =
            configuration.simulated.contains(.cluster) ? simulated : ClusterCollaboratorRPC(client: service.client(for: .cluster))
        let networkClient = service.client(for: .network)
        let network: any NetworkCollaborator =
            configuration.simulated.contains(.network)
            ? simulated : NetworkCollaboratorRPC(client: networkClient, store: store)
        let certs: any CertificateCollaborator = configuration.simulated.contains(.certs)
            ? simulated : CertificateCollaboratorRPC(network: networkClient, certs: service.client(for: .certs))
        let collaborators = Collaborators(images: images, cluster: cluster, network: network, certs: certs)
        let shipper = LogShipper(client: service.client(for: .logs), logger: logger)
        let engine = PipelineEngine(store: store, collaborators: collaborators, logs: shipper, limits: configuration.limits, logger: logger)
        try await engine.start()
        router.register(PipelineService(engine: engine))
        func shown(_ collaborator: PipelineConfiguration.Collaborator, _ address: ServiceAddress) -> Logger.MetadataValue {
            configuration.simulated.contains(collaborator) ? "simulated" : "\(address)"
        }
        logger.info("pipeline ready", metadata: [
            "builder": shown(.builder, service.directory[.builder]), "cluster": shown(.cluster, service.directory[.cluster]),
            "network": shown(.network, service.directory[.network]), "certs": shown(.certs, service.directory[.certs]),
            "logs": "\(service.directory[.logs])", "durability": "\(configuration.durability.rawValue)",
        ])
        return [LogShipperService(shipper: shipper), EngineWatchdog(engine: engine), HistoryRetention(store: store, retention: configuration.retention, logger: logger)]
    }
}

/// Removes history beyond what `retention` keeps, at start and then every interval.
struct HistoryRetention: Service {
    let store: PipelineStore
    let retention: PipelineConfiguration.Retention
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    let pruned = try store.prune(deploymentsPerService: retention.deploymentsPerService, releasesPerService: retention.releasesPerService)
                    if pruned != PipelineStore.Pruned() {
                        logger.info("history retention", metadata: [
                            "deployments": "\(pruned.deployments)", "service-records": "\(pruned.serviceRecords)", "releases": "\(pruned.releases)"])
                    }
                } catch {
                    logger.error("history retention failed; retried at the next interval", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: retention.interval)
            }
        }
    }
}

/// The engine's watchdog (step time limits) for the life of the service.
struct EngineWatchdog: Service {
    let engine: PipelineEngine

    func run() async throws {
        await cancelWhenGracefulShutdown { await engine.runWatchdog() }
    }
}

/// Runs the shared deployment log stream for the life of the service.
struct LogShipperService: Service {
    let shipper: LogShipper

    func run() async throws {
        await withGracefulShutdownHandler {
            await shipper.run()
        } onGracefulShutdown: {
            shipper.stop()
        }
    }
}
