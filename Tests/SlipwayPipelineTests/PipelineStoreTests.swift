import Foundation
import GRDB
import Testing

@testable import SlipwayPipeline

/// The store against a real SQLite database file.
@Suite struct PipelineStoreTests {
    func directory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("slipway-pipeline-\(UUID().uuidString)").path
    }

    func hello(_ store: PipelineStore) throws -> (DeploymentEnvironment, ManagedService) {
        let organization = try store.createOrganization(name: "acme")
        let project = try store.createProject(organizationID: organization.id, name: "shop")
        let environment = try store.createEnvironment(projectID: project.id, name: "prod")
        var spec = ServiceSpec(source: .application(.init(url: "https://example.com/hello.git", branch: "main")))
        spec.ports = [.init(internalPort: 8080, isPublic: true, kind: .http)]
        spec.environmentVariables = ["MODE": "production"]
        spec.readinessProbe = .init(kind: .http(path: "/health", port: 8080))
        let service = try store.createService(environmentID: environment.id, name: "web", configuration: spec, secrets: ["DATABASE_PASSWORD": "hunter2-secret"])
        return (environment, service)
    }

    @Test func theModelSurvivesAReopenWithItsFullConfiguration() throws {
        let path = directory()
        let (_, service) = try hello(try PipelineStore(directory: path))
        let reopened = try PipelineStore(directory: path)
        let loaded = try reopened.service(service.id)
        #expect(loaded == service)
        #expect(loaded.configuration.readinessProbe?.kind == .http(path: "/health", port: 8080))
        #expect(loaded.secrets["DATABASE_PASSWORD"] == "hunter2-secret")
    }

    @Test func secretsAreEncryptedAtRestAndTheKeyIsPrivate() throws {
        let path = directory()
        let store = try PipelineStore(directory: path)
        _ = try hello(store)
        // The database file holds the configuration in clear (so the search below can find text)
        // but not the secret.
        // (In write-ahead-log mode recent pages are in the -wal file until a checkpoint.)
        var bytes = try #require(FileManager.default.contents(atPath: path + "/pipeline.sqlite"))
        bytes += FileManager.default.contents(atPath: path + "/pipeline.sqlite-wal") ?? Data()
        #expect(bytes.range(of: Data("production".utf8)) != nil)
        #expect(bytes.range(of: Data("hunter2-secret".utf8)) == nil)
        for (file, mode) in [("secrets.key", 0o600), ("pipeline.sqlite", 0o600), ("pipeline.sqlite-wal", 0o600), ("", 0o700)] {
            let attributes = try FileManager.default.attributesOfItem(atPath: path + "/" + file)
            #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == mode, "\(file): \(String(describing: attributes[.posixPermissions]))")
        }
        // Another key cannot open them.
        try Data(repeating: 7, count: 32).write(to: URL(fileURLWithPath: path + "/secrets.key"))
        let wrongKey = try PipelineStore(directory: path)
        let id = try wrongKey.database.read { db in try String.fetchOne(db, sql: "SELECT id FROM service")! }
        #expect(throws: (any Error).self) { try wrongKey.service(id) }
    }

    @Test func namesAreUniqueWhereTheyLiveAndParentsMustExist() throws {
        let store = try PipelineStore(directory: directory())
        let (environment, _) = try hello(store)
        #expect(throws: PipelineStore.Failure.alreadyExists("organization acme")) { try store.createOrganization(name: "acme") }
        #expect(throws: PipelineStore.Failure.alreadyExists("service web")) {
            try store.createService(environmentID: environment.id, name: "web", configuration: ServiceSpec(source: .container(image: "nginx", tag: "1")))
        }
        #expect(throws: PipelineStore.Failure.notFound("environment env_missing")) {
            try store.createService(environmentID: "env_missing", name: "api", configuration: ServiceSpec(source: .container(image: "nginx", tag: "1")))
        }
    }

    @Test func aDeploymentMovesThroughTheStateMachineAndRefusesImpossibleSteps() throws {
        let store = try PipelineStore(directory: directory())
        let (environment, service) = try hello(store)
        let (record, created) = try store.recordDeployment(
            environmentID: environment.id, action: .deploy, services: [service.id: "abc123"], origin: .git, triggeredBy: "push", idempotencyKey: "delivery-1")
        #expect(created)
        #expect(record.services == [service.id: .queued])
        #expect(try store.apply(.startBuild, deploymentID: record.id, serviceID: service.id) == .building)
        #expect(throws: PipelineStore.Failure.self) { try store.apply(.succeed, deploymentID: record.id, serviceID: service.id) }
        #expect(try store.deployment(record.id).services[service.id] == .building)
        try store.apply(.start, deploymentID: record.id, serviceID: service.id)
        try store.apply(.succeed, deploymentID: record.id, serviceID: service.id)
        let done = try store.deployment(record.id)
        #expect(done.services[service.id] == .deployed)
        #expect(done.ended)
    }

    @Test func retentionKeepsTheNewestDeploymentsAndReleasesPerServiceAndNothingRunning() throws {
        let store = try PipelineStore(directory: directory())
        let (environment, service) = try hello(store)
        let other = try store.createService(environmentID: environment.id, name: "api", configuration: ServiceSpec(source: .container(image: "nginx", tag: "1")))
        var finished: [String] = []
        for index in 0..<6 {
            let record = try store.recordDeployment(
                environmentID: environment.id, action: .deploy, services: [service.id: "v\(index)"], origin: .api, triggeredBy: "t", idempotencyKey: nil).record
            try store.startStep(.gitClone, deploymentID: record.id, serviceID: service.id, at: Date())
            try store.apply(.startBuild, deploymentID: record.id, serviceID: service.id)
            try store.endStep(.gitClone, deploymentID: record.id, serviceID: service.id, status: .succeeded, message: "", at: Date())
            try store.apply(.start, deploymentID: record.id, serviceID: service.id)
            var change = PipelineStore.Change(deploymentID: record.id, serviceID: service.id)
            change.event = .succeed
            change.release = .init(commit: "c\(index)", image: "img:\(index)", configuration: service.configuration, secrets: service.secrets)
            try store.record(change)
            finished.append(record.id)
        }
        // One still queued, and the other service's only deployment: both kept.
        let queued = try store.recordDeployment(environmentID: environment.id, action: .deploy, services: [service.id: "next"], origin: .api, triggeredBy: "t", idempotencyKey: nil).record
        let lone = try store.recordDeployment(environmentID: environment.id, action: .deploy, services: [other.id: ""], origin: .api, triggeredBy: "t", idempotencyKey: nil).record

        let pruned = try store.prune(deploymentsPerService: 3, releasesPerService: 2)
        #expect(pruned == PipelineStore.Pruned(deployments: 4, serviceRecords: 4, releases: 4))
        #expect(try store.releases(serviceID: service.id, limit: 100).map(\.commit) == ["c5", "c4"])
        // Asked by commit (the gateway's replay check): one indexed read, none for a pruned one.
        #expect(try store.releases(serviceID: service.id, commit: "c4", limit: 1).map(\.image) == ["img:4"])
        #expect(try store.releases(serviceID: service.id, commit: "c1", limit: 1).isEmpty)
        // The queued one counts among the newest three: two finished ones stay with it.
        for id in finished.prefix(4) { #expect(throws: PipelineStore.Failure.self) { try store.deployment(id) } }
        for id in finished.suffix(2) + [queued.id, lone.id] { #expect(try store.deployment(id).id == id) }
        #expect(try store.steps(deploymentID: finished[0]).isEmpty)
        #expect(try store.steps(deploymentID: finished[5]).count == 1)
        // Nothing more to remove the second time.
        #expect(try store.prune(deploymentsPerService: 3, releasesPerService: 2) == PipelineStore.Pruned())
    }

    @Test func aCustomDomainBelongsToOneServiceAcrossOrganizationsFromTheMomentItIsSaved() throws {
        let path = directory()
        let store = try PipelineStore(directory: path)
        let (environment, web) = try hello(store)
        var mine = web.configuration
        mine.customDomains = ["Shop.Example.com"]
        try store.updateService(web.id, configuration: mine, secrets: web.secrets)
        // Another organization cannot take it, neither at creation nor by an update (any case).
        let other = try store.createEnvironment(projectID: try store.createProject(organizationID: try store.createOrganization(name: "rival").id, name: "p").id, name: "prod")
        var theirs = ServiceSpec(source: .container(image: "nginx", tag: "1"))
        theirs.customDomains = ["shop.example.com"]
        #expect(throws: PipelineStore.Failure.self) { try store.createService(environmentID: other.id, name: "web", configuration: theirs) }
        let rival = try store.createService(environmentID: other.id, name: "web", configuration: ServiceSpec(source: .container(image: "nginx", tag: "1")))
        let refused = #expect(throws: PipelineStore.Failure.self) { try store.updateService(rival.id, configuration: theirs, secrets: [:]) }
        #expect(refused?.description.contains("another service's") == true)
        #expect(try store.service(rival.id).configuration.customDomains.isEmpty)
        // Nor another service of the same environment; the holder keeps it across its own updates.
        #expect(throws: PipelineStore.Failure.self) { try store.createService(environmentID: environment.id, name: "api", configuration: theirs) }
        try store.updateService(web.id, configuration: mine, secrets: web.secrets)
        // Released when the holder lets it go, and survives a reopen.
        mine.customDomains = []
        try store.updateService(web.id, configuration: mine, secrets: web.secrets)
        try PipelineStore(directory: path).updateService(rival.id, configuration: theirs, secrets: [:])
        #expect(throws: PipelineStore.Failure.self) { try PipelineStore(directory: path).updateService(web.id, configuration: theirs, secrets: [:]) }
    }

    @Test func defaultDomainLabelsAreUniqueAcrossOrganizationsAndKeptByTheirEnvironment() throws {
        let path = directory()
        let store = try PipelineStore(directory: path)
        let (environment, web) = try hello(store)
        #expect(web.domainLabel == "web-prod")
        // Another organization's "web" in its own "prod" gets an address of its own.
        let rival = try store.createEnvironment(projectID: try store.createProject(organizationID: try store.createOrganization(name: "rival").id, name: "p").id, name: "Prod")
        let theirs = try store.createService(environmentID: rival.id, name: "web", configuration: ServiceSpec(source: .container(image: "nginx", tag: "1")))
        #expect(theirs.domainLabel.hasPrefix("web-prod-") && theirs.domainLabel.count == "web-prod-".count + 4)
        #expect(try store.service(theirs.id).domainLabel == theirs.domainLabel)
        // An environment name that is no DNS label is made one.
        let odd = try store.createEnvironment(projectID: environment.projectID, name: "QA  & Review!")
        #expect(try store.createService(environmentID: odd.id, name: "web", configuration: ServiceSpec(source: .container(image: "nginx", tag: "1"))).domainLabel == "web-qa-review")
        // A deleted service's label goes to its successor in the same environment, never to another's.
        func delete(_ serviceID: String, in environmentID: String) throws {
            let record = try store.recordDeployment(
                environmentID: environmentID, action: .delete, services: [serviceID: ""], origin: .api, triggeredBy: "t", idempotencyKey: nil
            ).record
            try store.apply(.start, deploymentID: record.id, serviceID: serviceID)
            var change = PipelineStore.Change(deploymentID: record.id, serviceID: serviceID)
            change.event = .succeed
            change.markDeleted = true
            try store.record(change)
        }
        try delete(web.id, in: environment.id)
        let another = try store.createService(environmentID: rival.id, name: "web2", configuration: ServiceSpec(source: .container(image: "nginx", tag: "1")))
        #expect(another.domainLabel == "web2-prod")
        let successor = try store.createService(environmentID: environment.id, name: "web", configuration: ServiceSpec(source: .container(image: "nginx", tag: "1")))
        #expect(successor.domainLabel == "web-prod")
        #expect(try PipelineStore(directory: path).service(successor.id).domainLabel == "web-prod")
        // Re-created under its name, a service gets back its suffixed label too.
        try delete(theirs.id, in: rival.id)
        let theirsAgain = try store.createService(environmentID: rival.id, name: "web", configuration: ServiceSpec(source: .container(image: "nginx", tag: "1")))
        #expect(theirsAgain.domainLabel == theirs.domainLabel && theirsAgain.id != theirs.id)
    }

    @Test func organizationQuotasAreCheckedWhereTheyWouldBeExceeded() throws {
        var quotas = OrganizationQuotas()
        #expect(quotas.set("services=2") == nil && quotas.set("memory-mib=1024") == nil && quotas.set("custom-domains=2") == nil)
        #expect(quotas.set("projects=2") == nil && quotas.set("environments=2") == nil)
        #expect(quotas.set("services=0")?.contains("VALUE 1 to") == true)
        #expect(quotas.set("disks=3")?.contains("unknown quota") == true)
        let store = try PipelineStore(directory: directory(), quotas: quotas)
        func quota(_ body: () throws -> Void) -> String? {
            do { try body() } catch let failure as PipelineStore.Failure {
                if case .quota(let message) = failure { return message }
            } catch {}
            return nil
        }
        let acme = try store.createOrganization(name: "acme")
        let shop = try store.createProject(organizationID: acme.id, name: "shop")
        _ = try store.createProject(organizationID: acme.id, name: "blog")
        #expect(quota { _ = try store.createProject(organizationID: acme.id, name: "third") }?.contains("quota of 2") == true)
        let prod = try store.createEnvironment(projectID: shop.id, name: "prod")
        _ = try store.createEnvironment(projectID: shop.id, name: "dev")
        #expect(quota { _ = try store.createEnvironment(projectID: shop.id, name: "qa") }?.contains("environments") == true)
        var small = ServiceSpec(source: .container(image: "nginx", tag: "1"))
        small.memoryMiB = 256
        small.replicas = 2
        let web = try store.createService(environmentID: prod.id, name: "web", configuration: small)
        // 512 + 2 × 512 MiB is over 1024.
        var big = small
        big.memoryMiB = 512
        #expect(quota { _ = try store.createService(environmentID: prod.id, name: "api", configuration: big) }?.contains("memory") == true)
        _ = try store.createService(environmentID: prod.id, name: "api", configuration: small)
        #expect(quota { _ = try store.createService(environmentID: prod.id, name: "third", configuration: small) }?.contains("services") == true)
        // An update is checked against the others, itself excluded.
        var scaled = small
        scaled.replicas = 3
        #expect(quota { try store.updateService(web.id, configuration: scaled, secrets: [:]) } != nil)
        #expect(try store.service(web.id).configuration.replicas == 2)
        var named = small
        named.customDomains = ["a.example.com", "b.example.com", "c.example.com"]
        #expect(quota { try store.updateService(web.id, configuration: named, secrets: [:]) }?.contains("custom-domains") == true)
        named.customDomains.removeLast()
        try store.updateService(web.id, configuration: named, secrets: [:])
        // Huge numbers saturate instead of trapping.
        var huge = small
        huge.replicas = Int.max
        huge.memoryMiB = Int.max
        #expect(quota { try store.updateService(web.id, configuration: huge, secrets: [:]) } != nil)
        // Another organization has quotas of its own.
        let other = try store.createEnvironment(projectID: try store.createProject(organizationID: try store.createOrganization(name: "other").id, name: "p").id, name: "prod")
        _ = try store.createService(environmentID: other.id, name: "web", configuration: small)
    }

    @Test func anOrganizationsBuildsTakeTurnsAndOthersAreNotHeldUp() async throws {
        let gate = OrganizationBuildGate(limit: 1)
        try await gate.acquire("acme")
        let second = Task { try await gate.acquire("acme") }
        while await gate.load("acme").waiting == 0 { await Task.yield() }
        // Another organization gets its slot at once.
        try await gate.acquire("other")
        #expect(await gate.load("other").running == 1)
        // A cancelled waiter leaves the queue without a slot; the next waits for the release.
        second.cancel()
        await #expect(throws: CancellationError.self) { try await second.value }
        let afterCancel = await gate.load("acme")
        #expect(afterCancel.waiting == 0 && afterCancel.running == 1)
        let third = Task { try await gate.acquire("acme") }
        while await gate.load("acme").waiting == 0 { await Task.yield() }
        await gate.release("acme")
        try await third.value
        let handed = await gate.load("acme")
        #expect(handed.running == 1 && handed.waiting == 0)
        await gate.release("acme")
        let idle = await gate.load("acme")
        #expect(idle.running == 0 && idle.waiting == 0)
    }

    @Test func anOrganizationsOwnBuildLimitStartsWaitingBuildsWhenRaisedAndHoldsNewOnesWhenLowered() async throws {
        let gate = OrganizationBuildGate(limit: 1, overrides: ["big": 2])
        let (big, acme) = (await gate.limit("big"), await gate.limit("acme"))
        #expect(big == 2 && acme == 1)
        try await gate.acquire("acme")
        let waiting = Task { try await gate.acquire("acme") }
        while await gate.load("acme").waiting == 0 { await Task.yield() }
        // Raised: the waiting build gets its slot without any release.
        await gate.setLimit("acme", 2)
        try await waiting.value
        let raised = await gate.load("acme")
        #expect(raised.running == 2 && raised.waiting == 0)
        // Lowered below what runs: nothing stops, a release is not handed on while over the limit.
        await gate.setLimit("acme", 1)
        let held = Task { try await gate.acquire("acme") }
        while await gate.load("acme").waiting == 0 { await Task.yield() }
        await gate.release("acme")
        let lowered = await gate.load("acme")
        #expect(lowered.running == 1 && lowered.waiting == 1)
        await gate.release("acme")
        try await held.value
        let handed = await gate.load("acme")
        #expect(handed.running == 1 && handed.waiting == 0)
        // Reset: the default again.
        await gate.setLimit("big", nil)
        #expect(await gate.limit("big") == 1)
    }

    @Test func anOrganizationsOwnQuotasReplaceTheDefaultsAndSurviveAReopen() throws {
        let path = directory()
        var defaults = OrganizationQuotas()
        #expect(defaults.set("services=1") == nil)
        let store = try PipelineStore(directory: path, quotas: defaults)
        let (environment, _) = try hello(store)
        let organizationID = try store.organizationID(projectID: environment.projectID)
        let spec = ServiceSpec(source: .container(image: "nginx", tag: "1"))
        #expect(throws: PipelineStore.Failure.self) { _ = try store.createService(environmentID: environment.id, name: "api", configuration: spec) }
        try store.setQuotas(organizationID: organizationID, limits: ["services": 2, "projects": 7], reset: [])
        _ = try store.createService(environmentID: environment.id, name: "api", configuration: spec)
        let reopened = try PipelineStore(directory: path, quotas: defaults)
        let quotas = try reopened.quotas(organizationID: organizationID)
        let services = try #require(quotas.first { $0.name == "services" })
        #expect(services.limit == 2 && services.used == 2 && services.overridden)
        #expect(quotas.first { $0.name == "projects" }?.limit == 7)
        let environments = try #require(quotas.first { $0.name == "environments" })
        #expect(environments.limit == 100 && !environments.overridden)
        #expect(try reopened.quotaOverrides(named: "projects") == [organizationID: 7])
        try reopened.setQuotas(organizationID: organizationID, limits: [:], reset: ["services"])
        #expect(throws: PipelineStore.Failure.self) { _ = try reopened.createService(environmentID: environment.id, name: "third", configuration: spec) }
        #expect(throws: PipelineStore.Failure.self) { try reopened.setQuotas(organizationID: "org_nope", limits: ["services": 3], reset: []) }
    }

    @Test func aRetriedRequestWithTheSameIdempotencyKeyIsTheSameDeployment() throws {
        let store = try PipelineStore(directory: directory())
        let (environment, service) = try hello(store)
        let first = try store.recordDeployment(environmentID: environment.id, action: .deploy, services: [service.id: "v1"], origin: .git, triggeredBy: "push", idempotencyKey: "delivery-7")
        let retry = try store.recordDeployment(environmentID: environment.id, action: .deploy, services: [service.id: "v1"], origin: .git, triggeredBy: "push", idempotencyKey: "delivery-7")
        #expect(first.created)
        #expect(!retry.created)
        #expect(retry.record.id == first.record.id)
    }

    @Test func afterACrashRunningWorkIsMarkedToResumeAndQueuedWorkStaysQueued() throws {
        let path = directory()
        let store = try PipelineStore(directory: path)
        let (environment, service) = try hello(store)
        let other = try store.createService(environmentID: environment.id, name: "api", configuration: ServiceSpec(source: .container(image: "nginx", tag: "1")))
        let running = try store.recordDeployment(environmentID: environment.id, action: .deploy, services: [service.id: "v1", other.id: "1"], origin: .api, triggeredBy: "t", idempotencyKey: nil).record
        var change = PipelineStore.Change(deploymentID: running.id, serviceID: service.id)
        change.event = .startBuild
        change.startStep = .gitClone
        try store.record(change)
        let queued = try store.recordDeployment(environmentID: environment.id, action: .restart, services: [service.id: ""], origin: .api, triggeredBy: "t", idempotencyKey: nil).record

        // A new process on the same files, as after kill -9.
        let restarted = try PipelineStore(directory: path)
        let resumedAt = Date(timeIntervalSince1970: 2_000_000_000)
        #expect(try restarted.prepareResume(at: resumedAt) == [.init(deploymentID: running.id, serviceID: service.id, status: .building, step: .gitClone)])
        let recovered = try restarted.deployment(running.id)
        #expect(recovered.services[service.id] == .building)
        #expect(recovered.services[other.id] == .queued)
        #expect(try restarted.deployment(queued.id).services[service.id] == .restartQueued)
        let step = try #require(try restarted.steps(deploymentID: running.id).first)
        #expect(step.status == .running && step.interruptions == 1 && step.resumedAt == resumedAt)
        #expect(try restarted.unfinishedDeployments().map(\.openServices) == [[service.id, other.id].sorted(), [service.id]])
        // A second restart counts a second interruption.
        _ = try restarted.prepareResume(at: resumedAt)
        #expect(try restarted.steps(deploymentID: running.id).first?.interruptions == 2)
    }

    @Test func deletingAnOrganizationDeletesEverythingUnderIt() throws {
        let store = try PipelineStore(directory: directory())
        let (environment, service) = try hello(store)
        let organization = try store.database.read { db in try String.fetchOne(db, sql: "SELECT id FROM organization")! }
        try store.deleteOrganization(organization)
        #expect(throws: PipelineStore.Failure.notFound("service \(service.id)")) { try store.service(service.id) }
        #expect(try store.services(environmentID: environment.id).isEmpty)
    }
}

@Suite struct PipelineHistoryTests {
    func store() throws -> (PipelineStore, String, String) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-history-\(UUID().uuidString)").path
        let store = try PipelineStore(directory: path)
        let organization = try store.createOrganization(name: "acme")
        let project = try store.createProject(organizationID: organization.id, name: "shop")
        let environment = try store.createEnvironment(projectID: project.id, name: "prod")
        let service = try store.createService(environmentID: environment.id, name: "web", configuration: ServiceSpec(source: .container(image: "nginx", tag: "1")))
        return (store, environment.id, service.id)
    }

    @Test func stepsAreRecordedWithTheirDurations() throws {
        let (store, environment, service) = try store()
        let deployment = try store.recordDeployment(environmentID: environment, action: .deploy, services: [service: "v1"], origin: .api, triggeredBy: "t", idempotencyKey: nil).record
        let start = Date(timeIntervalSince1970: 1_000)
        try store.startStep(.gitClone, deploymentID: deployment.id, serviceID: service, at: start)
        try store.endStep(.gitClone, deploymentID: deployment.id, serviceID: service, status: .succeeded, message: "commit abc", at: start.addingTimeInterval(0.25))
        try store.startStep(.build, deploymentID: deployment.id, serviceID: service, at: start.addingTimeInterval(0.3))
        let steps = try store.steps(deploymentID: deployment.id)
        #expect(steps.map(\.step) == [.gitClone, .build])
        #expect(steps[0].duration == 0.25)
        #expect(steps[0].message == "commit abc")
        #expect(steps[1].status == .running)
        #expect(steps[1].duration == nil)
        // A step that is not running cannot end (twice, or never started).
        #expect(throws: PipelineStore.Failure.self) {
            try store.endStep(.gitClone, deploymentID: deployment.id, serviceID: service, status: .failed)
        }
    }

    @Test func historyIsNewestFirstPagedAndFilterable() throws {
        let (store, environment, service) = try store()
        var ids: [String] = []
        for action in [ServiceAction.deploy, .restart, .deploy, .stop, .deploy] {
            ids.append(try store.recordDeployment(environmentID: environment, action: action, services: [service: ""], origin: .api, triggeredBy: "t", idempotencyKey: nil).record.id)
        }
        let first = try store.history(environmentID: environment, limit: 2)
        #expect(first.map(\.id) == [ids[4], ids[3]])
        let second = try store.history(environmentID: environment, limit: 2, after: first.last!.id)
        #expect(second.map(\.id) == [ids[2], ids[1]])
        let last = try store.history(environmentID: environment, limit: 2, after: second.last!.id)
        #expect(last.map(\.id) == [ids[0]])
        #expect(try store.history(environmentID: environment, action: .deploy).map(\.id) == [ids[4], ids[2], ids[0]])
    }

    @Test func aVersion1DatabaseIsMigratedInPlace() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-migrate-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        // A database as the first release left it: migrated only to v1, with a deployment in it.
        let old = try DatabaseQueue(path: path + "/pipeline.sqlite")
        try PipelineStore.migrator.migrate(old, upTo: "v1: model and deployments")
        try old.write { db in
            try db.execute(sql: "INSERT INTO organization (id, name) VALUES ('org_1', 'acme')")
            try db.execute(sql: "INSERT INTO project (id, organization_id, name) VALUES ('prj_1', 'org_1', 'shop')")
            try db.execute(sql: "INSERT INTO environment (id, project_id, name) VALUES ('env_1', 'prj_1', 'prod')")
            try db.execute(sql: "INSERT INTO deployment (id, environment_id, action, origin, triggered_by, created_at) VALUES ('dep_1', 'env_1', 'DEPLOY', 'API', 't', 1)")
        }
        try old.close()
        let store = try PipelineStore(directory: path)
        #expect(try store.deployment("dep_1").action == .deploy)
        try store.startStep(.build, deploymentID: "dep_1", serviceID: "svc_1")
        #expect(try store.steps(deploymentID: "dep_1").count == 1)
    }
}
