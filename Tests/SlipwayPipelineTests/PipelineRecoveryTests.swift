import Foundation
import Logging
import Testing

@testable import SlipwayPipeline

/// What a restarted pipeline does with the deployments its previous life left unfinished (the
/// kill -9 version of these runs against the executable in Tests/interop/test_pipeline.py).
@Suite struct PipelineRecoveryTests {
    func store() throws -> (PipelineStore, DeploymentEnvironment, ManagedService, ManagedService) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-recovery-\(UUID().uuidString)").path
        let store = try PipelineStore(directory: path)
        let organization = try store.createOrganization(name: "acme")
        let project = try store.createProject(organizationID: organization.id, name: "shop")
        let environment = try store.createEnvironment(projectID: project.id, name: "prod")
        var first = ServiceSpec(source: .container(image: "registry.example.com/db", tag: "16"))
        first.stage = 0
        var second = ServiceSpec(source: .application(.init(url: "https://git.example.com/api.git", branch: "main")))
        second.stage = 1
        let db = try store.createService(environmentID: environment.id, name: "db", configuration: first)
        let api = try store.createService(environmentID: environment.id, name: "api", configuration: second)
        return (store, environment, db, api)
    }

    func engine(_ store: PipelineStore) -> PipelineEngine {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let simulated = SimulatedCollaborators()
        return PipelineEngine(
            store: store, collaborators: Collaborators(images: simulated, cluster: simulated, network: simulated, certs: simulated), logs: nil, logger: logger)
    }

    func plan(_ services: ManagedService...) -> [PipelineStore.PlannedService] {
        services.map { PipelineStore.PlannedService(id: $0.id, name: $0.name, stage: $0.configuration.stage) }
    }

    @Test func aDeploymentStoppedBetweenStagesResumesWhereItWas() async throws {
        let (store, environment, db, api) = try store()
        let (record, _) = try store.recordDeployment(
            environmentID: environment.id, action: .deploy, planned: plan(db, api), origin: .api, triggeredBy: "t", idempotencyKey: nil)
        for event in [DeploymentStatus.Event.start, .succeed] { try store.apply(event, deploymentID: record.id, serviceID: db.id) }

        let engine = engine(store)
        try await engine.start()
        await engine.waitUntilIdle()
        let ended = try store.deployment(record.id)
        #expect(ended.services == [db.id: .deployed, api.id: .deployed])
        // Only the stage that had not run, ran.
        #expect(try store.steps(deploymentID: record.id).map(\.serviceID).allSatisfy { $0 == api.id })
    }

    @Test func aDeploymentStoppedRightAfterAFailedStageDoesNotRunTheNextOne() async throws {
        let (store, environment, db, api) = try store()
        let (record, _) = try store.recordDeployment(
            environmentID: environment.id, action: .deploy, planned: plan(db, api), origin: .api, triggeredBy: "t", idempotencyKey: nil)
        for event in [DeploymentStatus.Event.start, .fail] { try store.apply(event, deploymentID: record.id, serviceID: db.id) }

        let engine = engine(store)
        try await engine.start()
        await engine.waitUntilIdle()
        let ended = try store.deployment(record.id)
        #expect(ended.services == [db.id: .deploymentError, api.id: .skipped])
        #expect(ended.reasons[api.id] == "not run: an earlier stage failed (db)")
    }

    /// Where a kill can land: the collaborator call in progress, the service (db: a container, api:
    /// an application, both public) and the steps that must run again after the restart.
    static let interruptions: [(call: String, service: String, step: PipelineStore.Step, rerun: [String])] = [
        ("clone", "api", .gitClone, ["clone", "build", "deploy", "route", "certificate"]),
        ("build", "api", .build, ["clone", "build", "deploy", "route", "certificate"]),
        ("deploy", "api", .deployment, ["deploy", "route", "certificate"]),
        ("route", "api", .routerDeployment, ["route", "certificate"]),
        ("certificate", "api", .certificate, ["certificate"]),
        ("mirror", "db", .mirrorImage, ["mirror", "deploy", "route", "certificate"]),
    ]

    @Test(arguments: 0..<interruptions.count)
    func aServiceInterruptedMidStepResumesThereAndTheDeploymentSucceeds(_ index: Int) async throws {
        let (call, serviceName, step, rerun) = Self.interruptions[index]
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-resume-\(UUID().uuidString)").path
        let store = try PipelineStore(directory: path)
        let organization = try store.createOrganization(name: "acme")
        let project = try store.createProject(organizationID: organization.id, name: "shop")
        let environment = try store.createEnvironment(projectID: project.id, name: "prod")
        var spec = ServiceSpec(source: serviceName == "db" ? .container(image: "registry.example.com/db", tag: "16") : .application(.init(url: "https://git.example.com/api.git", branch: "main")))
        spec.ports = [.init(internalPort: 8080, isPublic: true, kind: .http)]
        let service = try store.createService(environmentID: environment.id, name: serviceName, configuration: spec)

        // The first life: the step's work never returns (as in a process killed there).
        let first = ScriptedCollaborators()
        first.hold(call, serviceName)
        let dying = engine(store, first)
        try await dying.start()
        let accepted = try await dying.submit(.init(environmentID: environment.id, action: .deploy))
        await first.arrived(call, serviceName)
        let waiting = try await dying.submit(.init(environmentID: environment.id, action: .restart))
        #expect(try store.deployment(accepted.deploymentID).services[service.id]?.isRunning == true)

        // The second life, on the same files.
        let second = ScriptedCollaborators()
        let restartedStore = try PipelineStore(directory: path)
        let engine = engine(restartedStore, second)
        try await engine.start()
        await engine.waitUntilIdle()
        let ended = try restartedStore.deployment(accepted.deploymentID)
        #expect(ended.services == [service.id: .deployed], "\(ended.reasons)")
        #expect(second.calls.map(\.kind) == rerun + ["restart"])
        let steps = try restartedStore.steps(deploymentID: accepted.deploymentID)
        #expect(steps.allSatisfy { $0.status == .succeeded || $0.status == .skipped }, "\(steps)")
        let interrupted = try #require(steps.first { $0.step == step })
        #expect(interrupted.interruptions == 1 && interrupted.resumedAt != nil)
        #expect(steps.filter { $0.step != step }.allSatisfy { $0.interruptions == 0 })
        #expect(try restartedStore.releases(serviceID: service.id, limit: 10).count == 1)
        #expect(try restartedStore.deployment(waiting.deploymentID).services == [service.id: .restarted])
    }

    @Test func aStepWaitsForAnUnavailableCollaboratorAndGoesOnOnceItAnswers() async throws {
        let (store, environment, db, api) = try store()
        let scripted = ScriptedCollaborators()
        scripted.unavailable("deploy", "db", times: 3)
        let engine = engine(store, scripted)
        try await engine.start()
        let accepted = try await engine.submit(.init(environmentID: environment.id, action: .deploy))
        await engine.waitUntilIdle()
        let ended = try store.deployment(accepted.deploymentID)
        #expect(ended.services == [db.id: .deployed, api.id: .deployed], "\(ended.reasons)")
        #expect(scripted.calls.filter { $0.kind == "deploy" && $0.service == "db" }.count == 4)
    }

    @Test func aCollaboratorThatStaysUnavailableFailsTheStepAtItsTimeLimitNamingIt() async throws {
        let (store, environment, db, _) = try store()
        let scripted = ScriptedCollaborators()
        scripted.unavailable("deploy", "db", times: 1000)
        var limits = PipelineEngine.Limits()
        limits.stepTimeout = .seconds(1)
        let engine = engine(store, scripted, limits: limits)
        try await engine.start()
        let watchdog = Task { await engine.runWatchdog() }
        defer { watchdog.cancel() }
        let accepted = try await engine.submit(.init(environmentID: environment.id, action: .deploy, serviceIDs: [db.id]))
        await engine.waitUntilIdle()
        let ended = try store.deployment(accepted.deploymentID)
        #expect(ended.services == [db.id: .deploymentError])
        let reason = try #require(ended.reasons[db.id])
        #expect(reason.contains("timed out") && reason.contains("slipway-cluster is unavailable"), "\(reason)")
    }

    func engine(_ store: PipelineStore, _ collaborators: ScriptedCollaborators, limits: PipelineEngine.Limits = .init()) -> PipelineEngine {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return PipelineEngine(
            store: store, collaborators: Collaborators(images: collaborators, cluster: collaborators, network: collaborators, certs: collaborators),
            logs: nil, limits: limits, logger: logger)
    }
}
