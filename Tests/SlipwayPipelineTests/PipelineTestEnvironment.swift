import Foundation
import Logging
import SlipwayProtos
import SlipwayRPC
import SlipwayServiceKit
import Synchronization
import Testing

@testable import SlipwayLogs
@testable import SlipwayPipeline

/// The pipeline service over RPC (real SQLite store, real logs service, both in process) with
/// ``ScriptedCollaborators`` standing in for the builder, cluster, network and certs services.
struct PipelineTestEnvironment: Sendable {
    typealias API = Slipway_Pipeline_V1_Pipeline
    typealias LogsAPI = Slipway_Logs_V1_Logs

    let directory: String
    let client: RPCClient
    let logs: RPCClient
    let fake: ScriptedCollaborators
    let engine: PipelineEngine

    static func with(limits: PipelineEngine.Limits = PipelineEngine.Limits(), _ body: @Sendable (PipelineTestEnvironment) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-pipeline-rpc-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        var logsConfiguration = LogsConfiguration()
        logsConfiguration.segmentBytes = 1 << 20
        let logStore = try LogStore(directory: directory + "/logs", configuration: logsConfiguration, logger: logger)
        var logsRouter = RPCRouter()
        logsRouter.register(LogsService(store: logStore, logger: logger))
        let logsServer = RPCServer(host: "127.0.0.1", port: 0, router: logsRouter, logger: logger)

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await logsServer.run() }
            let logs = RPCClient(host: "127.0.0.1", port: try await logsServer.listeningAddress.port!)
            let fake = ScriptedCollaborators()
            let store = try PipelineStore(directory: directory + "/pipeline")
            let shipper = LogShipper(client: logs, logger: logger)
            group.addTask { await shipper.run() }
            let engine = PipelineEngine(
                store: store, collaborators: Collaborators(images: fake, cluster: fake, network: fake, certs: fake), logs: shipper, limits: limits, logger: logger)
            try await engine.start()
            group.addTask { await engine.runWatchdog() }
            var router = RPCRouter()
            router.register(PipelineService(engine: engine))
            let server = RPCServer(host: "127.0.0.1", port: 0, router: router, logger: logger)
            group.addTask { try await server.run() }
            let client = RPCClient(host: "127.0.0.1", port: try await server.listeningAddress.port!)
            let environment = PipelineTestEnvironment(directory: directory, client: client, logs: logs, fake: fake, engine: engine)
            var failure: (any Error)?
            do {
                try await body(environment)
            } catch {
                failure = error
            }
            fake.openAll()
            await engine.waitUntilIdle()
            shipper.stop()
            await client.close()
            await logs.close()
            server.shutdown()
            logsServer.shutdown()
            group.cancelAll()  // the watchdog runs until cancelled
            try await group.waitForAll()
            if let failure { throw failure }
        }
    }

    // MARK: Model

    struct ServiceDefinition {
        var name: String
        var stage: UInt32 = 0
        var isPublic = false
        var container = false
        var variables: [String: String] = [:]
    }

    /// An organization, project and environment with these services; returns the environment id
    /// and the service ids by name.
    func makeEnvironment(_ services: [ServiceDefinition]) async throws -> (String, [String: String]) {
        var organizationRequest = Slipway_Pipeline_V1_CreateOrganizationRequest()
        organizationRequest.name = "org-\(UUID().uuidString.prefix(8))"
        let organization = try await client.unary(API.CreateOrganization.self, organizationRequest)
        var projectRequest = Slipway_Pipeline_V1_CreateProjectRequest()
        projectRequest.organizationId = organization.id
        projectRequest.name = "shop"
        let project = try await client.unary(API.CreateProject.self, projectRequest)
        var environmentRequest = Slipway_Pipeline_V1_CreateEnvironmentRequest()
        environmentRequest.projectId = project.id
        environmentRequest.name = "prod"
        let environment = try await client.unary(API.CreateEnvironment.self, environmentRequest)
        var ids: [String: String] = [:]
        for definition in services {
            ids[definition.name] = try await createService(environment.id, definition).id
        }
        return (environment.id, ids)
    }

    func createService(_ environmentID: String, _ definition: ServiceDefinition) async throws -> Slipway_Pipeline_V1_Service {
        var request = Slipway_Pipeline_V1_CreateServiceRequest()
        request.environmentId = environmentID
        request.name = definition.name
        request.config = Self.config(definition)
        request.secrets = ["API_TOKEN": "secret-\(definition.name)"]
        return try await client.unary(API.CreateService.self, request)
    }

    static func config(_ definition: ServiceDefinition) -> Slipway_Pipeline_V1_ServiceConfig {
        var config = Slipway_Pipeline_V1_ServiceConfig()
        if definition.container {
            var container = Slipway_Pipeline_V1_ContainerSource()
            container.image = "registry.example.com/\(definition.name)"
            container.tag = "1.0"
            config.source = .container(container)
        } else {
            var git = Slipway_Pipeline_V1_GitSource()
            git.url = "https://git.example.com/\(definition.name).git"
            git.branch = "main"
            config.source = .application(git)
        }
        var port = Slipway_Pipeline_V1_Port()
        port.internalPort = 8080
        port.public = definition.isPublic
        config.ports = [port]
        config.stage = definition.stage
        config.environmentVariables = definition.variables
        return config
    }

    // MARK: Actions

    func deploy(_ environmentID: String, services: [String] = [], versions: [String: String] = [:], key: String = "") async throws -> Slipway_Pipeline_V1_ActionResponse {
        var request = Slipway_Pipeline_V1_DeployRequest()
        request.environmentId = environmentID
        request.serviceIds = services
        request.versions = versions
        request.trigger = Self.trigger(key)
        return try await client.unary(API.Deploy.self, request)
    }

    func action(_ method: String, _ environmentID: String, services: [String] = []) async throws -> Slipway_Pipeline_V1_ActionResponse {
        var request = Slipway_Pipeline_V1_ActionRequest()
        request.environmentId = environmentID
        request.serviceIds = services
        request.trigger = Self.trigger("")
        return try await client.unary(method, request: request, responseType: Slipway_Pipeline_V1_ActionResponse.self)
    }

    static func trigger(_ key: String) -> Slipway_Pipeline_V1_Trigger {
        var trigger = Slipway_Pipeline_V1_Trigger()
        trigger.origin = .cli
        trigger.triggeredBy = "alice"
        trigger.idempotencyKey = key
        return trigger
    }

    func cancel(_ deploymentID: String) async throws -> Slipway_Pipeline_V1_Deployment {
        var request = Slipway_Pipeline_V1_CancelRequest()
        request.deploymentId = deploymentID
        return try await client.unary(API.Cancel.self, request).deployment ?? Slipway_Pipeline_V1_Deployment()
    }

    func deployment(_ id: String) async throws -> Slipway_Pipeline_V1_Deployment {
        var request = Slipway_Pipeline_V1_GetDeploymentRequest()
        request.deploymentId = id
        return try await client.unary(API.GetDeployment.self, request)
    }

    /// Waits, through Watch, until the deployment has ended; returns it.
    func ended(_ environmentID: String, _ deploymentID: String) async throws -> Slipway_Pipeline_V1_Deployment {
        var request = Slipway_Pipeline_V1_WatchRequest()
        request.environmentId = environmentID
        request.deploymentId = deploymentID
        try await client.serverStreaming(API.Watch.self, request, options: CallOptions(timeout: .seconds(60))) { events in
            for try await event in events {
                // Subscribed: from here on an end cannot be missed.
                if event.kind == .eventSnapshotEnd, try await deployment(deploymentID).endedUnixMillis != 0 { return }
                if event.kind == .eventDeploymentEnded { return }
            }
        }
        return try await deployment(deploymentID)
    }

    func service(_ deployment: Slipway_Pipeline_V1_Deployment, _ id: String) throws -> Slipway_Pipeline_V1_ServiceDeployment {
        try #require(deployment.services.first { $0.serviceId == id })
    }

    func steps(_ deployment: Slipway_Pipeline_V1_Deployment, _ id: String) throws -> [String] {
        try service(deployment, id).steps.map { "\($0.step)=\($0.status)" }
    }

    /// Every line of a deployment's log stream, once its last line ("deployment ended") is in.
    func logLines(_ environmentID: String, _ deploymentID: String) async throws -> [Slipway_Logs_V1_LogLine] {
        var key = Slipway_Logs_V1_StreamKey()
        key.environmentId = environmentID
        key.deploymentId = deploymentID
        var tail = Slipway_Logs_V1_TailRequest()
        tail.stream = key
        tail.start = .afterSeq(0)
        var filter = Slipway_Logs_V1_Filter()
        filter.contains = "deployment ended"
        tail.filter = filter
        try await logs.serverStreaming(LogsAPI.Tail.self, tail, options: CallOptions(timeout: .seconds(60))) { responses in
            for try await response in responses {
                if case .line? = response.item { return }
            }
        }
        var request = Slipway_Logs_V1_QueryRequest()
        request.stream = key
        request.pageSize = 1000
        return try await logs.unary(LogsAPI.Query.self, request).lines
    }
}

/// The builder, cluster, network and certs as a test scripts them: every call is recorded; a step
/// can be held at a gate until the test opens it, or made to fail.
final class ScriptedCollaborators: ImageCollaborator, ClusterCollaborator, NetworkCollaborator, CertificateCollaborator {
    struct Call: Sendable, Equatable {
        var kind: String
        var service: String
        var detail: String
    }

    private struct State {
        var calls: [Call] = []
        var holds: [String: AsyncStream<Void>.Continuation] = [:]
        var holdStreams: [String: AsyncStream<Void>] = [:]
        var arrivals: [(key: String, count: Int, continuation: CheckedContinuation<Void, Never>)] = []
        var counts: [String: Int] = [:]
        var failures: [String: String] = [:]
        var unavailable: [String: Int] = [:]
        var active = 0
        var maxActive = 0
    }

    private let state = Mutex(State())

    var calls: [Call] { state.withLock { $0.calls } }
    var maxConcurrentDeployments: Int { state.withLock { $0.maxActive } }

    /// The next `kind` call for `service` waits until ``open(_:_:)``.
    func hold(_ kind: String, _ service: String) {
        let (stream, continuation) = AsyncStream<Void>.makeStream()
        state.withLock {
            $0.holds["\(kind)/\(service)"] = continuation
            $0.holdStreams["\(kind)/\(service)"] = stream
        }
    }

    func open(_ kind: String, _ service: String) {
        state.withLock { $0.holds.removeValue(forKey: "\(kind)/\(service)") }?.finish()
    }

    func openAll() {
        let holds = state.withLock { state in
            defer { state.holds = [:] }
            return Array(state.holds.values)
        }
        for hold in holds { hold.finish() }
    }

    func fail(_ kind: String, _ service: String, _ message: String) {
        state.withLock { $0.failures["\(kind)/\(service)"] = message }
    }

    /// The next `times` `kind` calls for `service` fail as a collaborator that cannot be reached would.
    func unavailable(_ kind: String, _ service: String, times: Int) {
        state.withLock { $0.unavailable["\(kind)/\(service)"] = times }
    }

    /// Returns once the `count`-th `kind` call for `service` ("*": any service) has begun.
    func arrived(_ kind: String, _ service: String, count: Int = 1) async {
        let key = "\(kind)/\(service)"
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                if state.counts[key, default: 0] >= count { return true }
                state.arrivals.append((key, count, continuation))
                return false
            }
            if now { continuation.resume() }
        }
    }

    private func call(_ kind: String, _ work: ServiceWork, _ detail: String = "") async throws {
        let key = "\(kind)/\(work.service.name)"
        let (waiters, stream, failure) = state.withLock { state in
            state.calls.append(Call(kind: kind, service: work.service.name, detail: detail))
            state.counts[key, default: 0] += 1
            state.counts["\(kind)/*", default: 0] += 1
            if kind == "deploy" {
                state.active += 1
                state.maxActive = max(state.maxActive, state.active)
            }
            let counts = state.counts
            let isReady = { (arrival: (key: String, count: Int, continuation: CheckedContinuation<Void, Never>)) in
                counts[arrival.key, default: 0] >= arrival.count
            }
            let ready = state.arrivals.filter(isReady).map(\.continuation)
            state.arrivals.removeAll(where: isReady)
            var failure = state.failures[key].map { StepFailure($0, isBuildError: kind == "build") }
            if let left = state.unavailable[key], left > 0 {
                state.unavailable[key] = left - 1
                failure = StepFailure("slipway-\(kind == "deploy" ? "cluster" : kind) is unavailable: cannot connect", isUnavailable: true)
            }
            return (ready, state.holdStreams.removeValue(forKey: key), failure)
        }
        defer {
            if kind == "deploy" { state.withLock { $0.active -= 1 } }
        }
        for waiter in waiters { waiter.resume() }
        if let stream {
            for await _ in stream {}
        }
        try Task.checkCancellation()
        if let failure { throw failure }
    }

    func build(_ work: ServiceWork, cloned: @escaping @Sendable (String) async -> Void) async throws -> BuiltImage {
        try await call("clone", work, work.requestedVersion)
        let commit = work.requestedVersion.isEmpty ? String(repeating: "a", count: 40) : work.requestedVersion
        await cloned(commit)
        try await call("build", work, commit)
        return BuiltImage(commit: commit, image: "registry.test/\(work.repository):\(commit.prefix(12))@sha256:\(commit.prefix(12))", skipped: work.requestedVersion == "prebuilt")
    }

    func mirror(_ work: ServiceWork) async throws -> BuiltImage {
        try await call("mirror", work)
        return BuiltImage(commit: "", image: "registry.test/\(work.repository):1.0@sha256:0", skipped: false)
    }

    func deploy(_ work: ServiceWork, image: String) async throws -> RunningStatus {
        try await call("deploy", work, "\(image) \(work.service.configuration.environmentVariables.sorted { $0.key < $1.key }.map { "\($0)=\($1)" }.joined(separator: ","))")
        return .running
    }

    func rollBack(_ work: ServiceWork, to previous: PipelineStore.Release?) async throws -> RunningStatus? {
        state.withLock { $0.calls.append(Call(kind: "rollback", service: work.service.name, detail: previous?.image ?? "none")) }
        return previous == nil ? nil : .running
    }

    func restart(_ work: ServiceWork) async throws -> RunningStatus {
        try await call("restart", work)
        return .running
    }

    func stop(_ work: ServiceWork) async throws -> RunningStatus {
        try await call("stop", work)
        return .stopped
    }

    func delete(_ work: ServiceWork) async throws {
        try await call("delete", work)
    }

    func route(_ work: ServiceWork) async throws {
        try await call("route", work)
    }

    func removeRoutes(_ work: ServiceWork) async throws {
        try await call("unroute", work)
    }

    func certificate(_ work: ServiceWork) async throws -> String {
        try await call("certificate", work)
        return ""
    }
}
