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

    @Test func aDeploymentInterruptedMidStepEndsWithAReasonAndWaitingOnesRun() async throws {
        let (store, environment, db, api) = try store()
        let (interrupted, _) = try store.recordDeployment(
            environmentID: environment.id, action: .deploy, planned: plan(db, api), origin: .api, triggeredBy: "t", idempotencyKey: nil)
        var change = PipelineStore.Change(deploymentID: interrupted.id, serviceID: db.id)
        change.event = .start
        change.startStep = .mirrorImage
        try store.record(change)
        let (waiting, _) = try store.recordDeployment(
            environmentID: environment.id, action: .restart, planned: plan(db), origin: .api, triggeredBy: "t", idempotencyKey: nil)

        let engine = engine(store)
        try await engine.start()
        let first = try store.deployment(interrupted.id)
        #expect(first.ended)
        #expect(first.services == [db.id: .deploymentError, api.id: .skipped])
        #expect(first.reasons[db.id]?.hasPrefix("interrupted: the pipeline stopped while this step ran") == true)
        #expect(first.reasons[api.id] == "not run: an earlier stage was interrupted by a pipeline restart")
        let step = try #require(try store.steps(deploymentID: interrupted.id).first)
        #expect(step.status == .failed && step.endedAt != nil && step.message.hasPrefix("interrupted"))
        await engine.waitUntilIdle()
        #expect(try store.deployment(waiting.id).services == [db.id: .restarted])
    }
}
