import Foundation
import Logging
import SlipwayRPC
import SlipwayServiceKit
import Synchronization

/// Errors the engine reports to callers (the RPC layer maps them to status codes).
public enum PipelineError: Error, Equatable, CustomStringConvertible {
    case invalidArgument(String)
    case failedPrecondition(String)
    case resourceExhausted(String)

    public var description: String {
        switch self {
        case .invalidArgument(let message), .failedPrecondition(let message), .resourceExhausted(let message): message
        }
    }
}

/// Turns "deploy this" into an ordered, observable, recoverable execution: one action per
/// environment at a time (``EnvironmentQueue``), stages in order (reverse for STOP and DELETE), the
/// services of a stage in parallel up to ``Limits/maxParallelServices``, per-service steps through
/// the ``Collaborators``, every change written to the ``PipelineStore`` before it is acted on and
/// published to ``StatusHub`` watchers after.
public actor PipelineEngine {
    public struct Limits: Sendable {
        /// Services of one stage that run at once.
        public var maxParallelServices = 4
        /// Deployments that may wait behind the running one, per environment; beyond, RESOURCE_EXHAUSTED.
        public var maxQueuedPerEnvironment = 100
        /// GIT_CLONE + BUILD together, and MIRROR_IMAGE.
        public var buildTimeout: Duration = .seconds(1800)
        /// Every other step.
        public var stepTimeout: Duration = .seconds(600)

        public init() {}
    }

    /// An action asked for.
    public struct Submission: Sendable {
        public var environmentID: String
        public var action: ServiceAction
        /// Empty: every service of the environment.
        public var serviceIDs: [String]
        /// Per service id: commit, tag or image tag.
        public var versions: [String: String] = [:]
        public var origin: DeploymentOrigin = .api
        public var triggeredBy = ""
        public var idempotencyKey: String?
        public var rollbackReleaseID: String?

        public init(environmentID: String, action: ServiceAction, serviceIDs: [String] = []) {
            self.environmentID = environmentID
            self.action = action
            self.serviceIDs = serviceIDs
        }
    }

    public struct Accepted: Sendable, Equatable {
        public var deploymentID: String
        /// 0: runs now; n: n-th in line.
        public var position: Int
        public var duplicate: Bool
        public var superseded: [String]
    }

    /// What a running deployment's tasks share.
    struct Context: Sendable {
        let store: PipelineStore
        let collaborators: Collaborators
        let hub: StatusHub
        let limits: Limits
        let logger: Logger
        /// Each organization's builds at once (its `concurrent-builds` quota).
        let builds: OrganizationBuildGate
    }

    private struct Running {
        var services: [String: (run: ServiceRun, task: Task<Bool, Never>)] = [:]
        var canceled = false
    }

    static let deleted = PipelineError.failedPrecondition("the service was deleted by an earlier deployment")

    /// How often the watchdog looks for steps past their time limit.
    static let watchdogPeriod: Duration = .milliseconds(250)

    nonisolated let store: PipelineStore
    /// Environments never change once created (no rename): read once.
    private nonisolated let environmentCache = Mutex<[String: DeploymentEnvironment]>([:])
    nonisolated let hub: StatusHub
    nonisolated let limits: Limits
    private let context: Context
    private let logs: LogShipper?
    private let logger: Logger
    private var queues: [String: EnvironmentQueue] = [:]
    private var running: [String: Running] = [:]
    private var idleWaiters: [CheckedContinuation<Void, Never>] = []

    /// `logs`: where deployment log lines go (nil: nowhere).
    public init(store: PipelineStore, collaborators: Collaborators, hub: StatusHub = StatusHub(), logs: LogShipper?, limits: Limits = Limits(), logger: Logger) {
        self.store = store
        self.hub = hub
        self.limits = limits
        self.logs = logs
        self.logger = logger
        self.context = Context(
            store: store, collaborators: collaborators, hub: hub, limits: limits, logger: logger,
            builds: OrganizationBuildGate(limit: store.quotas.concurrentBuilds, overrides: (try? store.quotaOverrides(named: "concurrent-builds")) ?? [:]))
    }

    // MARK: Quotas held in memory

    /// Takes the organization's number of builds at once from the store (raised, waiting builds
    /// start). Read inside the gate, so two changes at once leave it as the database says.
    public func refreshBuildLimit(organizationID: String) async {
        let store = self.store
        await context.builds.setLimit(organizationID) { try? store.quotaOverrides(named: "concurrent-builds")[organizationID] }
    }

    public func buildsRunning(organizationID: String) async -> Int {
        await context.builds.load(organizationID).running
    }

    // MARK: Start and recovery

    /// Picks up what a previous run left unfinished and starts the queues: a service whose work
    /// was running when the process stopped resumes at the step it was in (each step is safe to run
    /// again: docs/architecture.md), the deployment's later stages follow, and waiting deployments
    /// run in their order.
    public func start() throws {
        for interrupted in try store.prepareResume() {
            logger.warning("resuming work a restart interrupted", metadata: [
                "deployment": "\(interrupted.deploymentID)", "service": "\(interrupted.serviceID)",
                "status": "\(interrupted.status.rawValue)", "step": "\(interrupted.step?.rawValue ?? "none")",
            ])
        }
        for deployment in try store.unfinishedDeployments() {
            _ = enqueue(deployment.id, environmentID: deployment.environmentID, action: deployment.action, services: deployment.openServices)
        }
    }

    // MARK: Submitting

    public func submit(_ submission: Submission) throws -> Accepted {
        // A retry is answered before anything else is checked: its deployment exists already.
        if let key = submission.idempotencyKey, let existing = try store.deploymentID(environmentID: submission.environmentID, idempotencyKey: key) {
            return Accepted(deploymentID: existing, position: queues[submission.environmentID]?.position(of: existing) ?? 0, duplicate: true, superseded: [])
        }
        let all = try store.serviceSummaries(environmentID: submission.environmentID)
        var chosen = all
        if !submission.serviceIDs.isEmpty {
            for id in submission.serviceIDs where !all.contains(where: { $0.id == id }) {
                throw PipelineStore.Failure.notFound("service \(id) in environment \(submission.environmentID)")
            }
            chosen = all.filter { submission.serviceIDs.contains($0.id) }
        }
        for serviceID in submission.versions.keys where !chosen.contains(where: { $0.id == serviceID }) {
            throw PipelineError.invalidArgument("versions names service \(serviceID), which this deployment does not act on")
        }
        guard !chosen.isEmpty else {
            throw PipelineError.failedPrecondition("environment \(submission.environmentID) has no services to act on; create one first")
        }
        if let waiting = queues[submission.environmentID]?.waiting.count, waiting >= limits.maxQueuedPerEnvironment {
            throw PipelineError.resourceExhausted(
                "environment \(submission.environmentID) already has \(waiting) deployments waiting (limit \(limits.maxQueuedPerEnvironment)); wait for them or cancel some")
        }
        let planned = chosen.map {
            PipelineStore.PlannedService(id: $0.id, name: $0.name, stage: $0.stage, version: submission.versions[$0.id] ?? "")
        }
        let (record, created) = try store.recordDeployment(
            environmentID: submission.environmentID, action: submission.action, planned: planned, origin: submission.origin,
            triggeredBy: submission.triggeredBy, idempotencyKey: submission.idempotencyKey, rollbackReleaseID: submission.rollbackReleaseID)
        guard created else {
            let position = queues[record.environmentID]?.position(of: record.id) ?? 0
            return Accepted(deploymentID: record.id, position: position, duplicate: true, superseded: [])
        }
        var queuedEvent = PipelineEvent(kind: .deploymentQueued, environmentID: record.environmentID, deploymentID: record.id)
        queuedEvent.message = "\(submission.action.rawValue) by \(submission.triggeredBy) (\(submission.origin.rawValue))"
        hub.publish(queuedEvent)
        for (serviceID, status) in record.services.sorted(by: { $0.key < $1.key }) {
            var event = PipelineEvent(kind: .deploymentStatus, environmentID: record.environmentID, deploymentID: record.id, serviceID: serviceID)
            event.deploymentStatus = status
            hub.publish(event)
        }
        let result = enqueue(record.id, environmentID: record.environmentID, action: submission.action, services: planned.map(\.id))
        var position = 0
        if case .queued(let place) = result.placement { position = place }
        return Accepted(deploymentID: record.id, position: position, duplicate: false, superseded: result.superseded.keys.sorted())
    }

    private func enqueue(_ deploymentID: String, environmentID: String, action: ServiceAction, services: [String]) -> EnvironmentQueue.Enqueued {
        var queue = queues[environmentID] ?? EnvironmentQueue()
        let result = queue.enqueue(.init(deploymentID: deploymentID, action: action, services: services))
        queues[environmentID] = queue
        for (older, taken) in result.superseded {
            for serviceID in taken {
                var change = PipelineStore.Change(deploymentID: older, serviceID: serviceID)
                change.event = .skip
                change.reason = "superseded by deployment \(deploymentID)"
                _ = try? store.record(change, announce: announcer(environmentID, change))
            }
        }
        for removed in result.removed {
            hub.publish(PipelineEvent(kind: .deploymentEnded, environmentID: environmentID, deploymentID: removed))
        }
        if case .started = result.placement { launch(deploymentID, environmentID: environmentID) }
        return result
    }

    private func launch(_ deploymentID: String, environmentID: String) {
        // Its start is recorded with its first service's first step (a deployment stopped before
        // that is simply queued again after a restart).
        running[deploymentID] = Running()
        Task {
            await self.execute(deploymentID)
            self.finished(deploymentID, environmentID: environmentID)
        }
    }

    private func finished(_ deploymentID: String, environmentID: String) {
        running[deploymentID] = nil
        var queue = queues[environmentID] ?? EnvironmentQueue()
        let next = queue.finish(deploymentID)
        queues[environmentID] = queue.running == nil ? nil : queue
        if let next {
            launch(next.deploymentID, environmentID: environmentID)
        } else if queues.isEmpty {
            let waiters = idleWaiters
            idleWaiters = []
            for waiter in waiters { waiter.resume() }
        }
    }

    /// Returns once nothing runs or waits (tests and the benchmark).
    public func waitUntilIdle() async {
        if queues.isEmpty { return }
        await withCheckedContinuation { idleWaiters.append($0) }
    }

    /// The running deployment and those waiting, in order.
    public func queue(of environmentID: String) -> (running: String?, waiting: [String]) {
        let queue = queues[environmentID]
        return (queue?.running?.deploymentID, queue?.waiting.map(\.deploymentID) ?? [])
    }

    // MARK: Cancel

    /// A waiting deployment ends CANCELED at once. A running one: services not started end
    /// CANCELED, a build or rollout in progress is stopped (CANCELING, then CANCELED once its work
    /// has stopped and a half-rolled-out service is back on its previous release); restart, stop
    /// and delete in progress run to their end.
    public func cancel(_ deploymentID: String) throws -> PipelineStore.DeploymentRecord {
        let record = try store.deployment(deploymentID)
        guard !record.ended else {
            throw PipelineError.failedPrecondition("deployment \(deploymentID) has already ended; there is nothing to cancel")
        }
        if var queue = queues[record.environmentID], queue.remove(deploymentID) {
            queues[record.environmentID] = queue
            for (serviceID, status) in record.services where status.isQueued {
                applyCancel(record.environmentID, deploymentID, serviceID, reason: "canceled before it started")
            }
            hub.publish(PipelineEvent(kind: .deploymentEnded, environmentID: record.environmentID, deploymentID: deploymentID))
        } else if running[deploymentID] != nil {
            running[deploymentID]?.canceled = true
            for (serviceID, status) in record.services.sorted(by: { $0.key < $1.key }) {
                if status.isQueued {
                    applyCancel(record.environmentID, deploymentID, serviceID, reason: "canceled before it started")
                } else if status == .building || status == .deploying {
                    applyCancel(record.environmentID, deploymentID, serviceID, reason: "canceled")
                }
            }
        }
        return try store.deployment(deploymentID)
    }

    private func applyCancel(_ environmentID: String, _ deploymentID: String, _ serviceID: String, reason: String) {
        var change = PipelineStore.Change(deploymentID: deploymentID, serviceID: serviceID)
        change.event = .cancel
        change.reason = reason
        // Refused when the service finished meanwhile: then there is nothing to cancel. A service
        // that started since the caller looked is now CANCELING: its work is stopped too.
        if (try? store.record(change, announce: announcer(environmentID, change)))?.status == .canceling {
            running[deploymentID]?.services[serviceID]?.task.cancel()
        }
    }

    /// Cancels the services whose running step is past its time limit (the step then fails as timed out).
    private func cancelLateSteps() {
        let now = ContinuousClock.now
        for deployment in running.values {
            for service in deployment.services.values where service.run.expireIfLate(now: now) {
                service.task.cancel()
            }
        }
    }

    /// The watchdog: every ``watchdogPeriod`` it cancels the services whose running step is past
    /// its time limit, until the calling task is cancelled. It runs as a `Service` of the service
    /// group (``EngineWatchdog``), so it lives exactly as long as the service.
    public func runWatchdog() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: Self.watchdogPeriod)
            cancelLateSteps()
        }
    }

    private func isCanceled(_ deploymentID: String) -> Bool {
        running[deploymentID]?.canceled ?? false
    }

    private func spawn(_ deploymentID: String, _ plan: ServicePlan) -> (ServiceRun, Task<Bool, Never>) {
        let run = ServiceRun(context: context, plan: plan)
        let task = Task { await run.run() }
        running[deploymentID]?.services[plan.service.id] = (run, task)
        return (run, task)
    }

    // MARK: Execution

    /// Publishes a recorded status change (called by the store in commit order).
    private nonisolated func announcer(_ environmentID: String, _ change: PipelineStore.Change) -> (DeploymentStatus) -> Void {
        let hub = self.hub
        return { status in
            var event = PipelineEvent(kind: .deploymentStatus, environmentID: environmentID, deploymentID: change.deploymentID, serviceID: change.serviceID)
            event.deploymentStatus = status
            event.message = change.reason ?? ""
            hub.publish(event)
        }
    }

    /// Runs a deployment's stages; returns when every service is final.
    private nonisolated func execute(_ deploymentID: String) async {
        let started = ContinuousClock.now
        let record: PipelineStore.DeploymentRecord
        let environment: DeploymentEnvironment
        do {
            record = try store.deployment(deploymentID)
            environment = try environmentCache.withLock { $0[record.environmentID] } ?? store.environment(record.environmentID)
            environmentCache.withLock { $0[record.environmentID] = environment }
        } catch {
            logger.error("cannot load a deployment to run", metadata: ["deployment": "\(deploymentID)", "error": "\(error)"])
            return
        }
        let log = DeploymentLog(shipper: logs, environmentID: record.environmentID, deploymentID: deploymentID)
        let reverse = record.action == .stop || record.action == .delete
        // Queued, or running when the pipeline stopped (resumed).
        let pending = record.services.filter { !$0.value.isFinal }.keys
        let stages = Dictionary(grouping: pending) { record.details[$0]?.stage ?? 0 }
            .sorted { reverse ? $0.key > $1.key : $0.key < $1.key }
        let names = record.details.values.map(\.name).sorted().joined(separator: ", ")
        log.write("\(record.action.rawValue) of \(names) requested by \(record.triggeredBy.isEmpty ? "unknown" : record.triggeredBy) (\(record.origin.rawValue))", step: "")

        // Resumed after a restart: a stage that had already failed still stops the later ones.
        let failedBefore = record.services.filter { $0.value.isError }.keys.compactMap { record.details[$0]?.name }.sorted()
        var failure: String? = failedBefore.isEmpty ? nil : "an earlier stage failed (\(failedBefore.joined(separator: ", ")))"
        var finals = record.services
        for (stage, serviceIDs) in stages {
            let ordered = serviceIDs.sorted()
            let canceled = await isCanceled(deploymentID)
            if failure != nil || canceled {
                let reason = failure.map { "not run: \($0)" } ?? "not run: the deployment was canceled"
                for serviceID in ordered {
                    var change = PipelineStore.Change(deploymentID: deploymentID, serviceID: serviceID)
                    change.event = .skip
                    change.reason = reason
                    // Refused for services a cancel already ended.
                    finals[serviceID] = (try? store.record(change, announce: announcer(record.environmentID, change)))?.status ?? finals[serviceID]
                }
                continue
            }
            log.write("stage \(stage): \(ordered.compactMap { record.details[$0]?.name }.joined(separator: ", "))", step: "")
            var plans: [ServicePlan] = []
            for serviceID in ordered {
                do {
                    plans.append(try plan(record, environment, serviceID, log: log))
                } catch {
                    var change = PipelineStore.Change(deploymentID: deploymentID, serviceID: serviceID)
                    change.event = .skip
                    change.reason = "not run: \(error)"
                    finals[serviceID] = (try? store.record(change, announce: announcer(record.environmentID, change)))?.status ?? finals[serviceID]
                    // A service deleted meanwhile has nothing to do; anything else stops the later stages.
                    if error as? PipelineError != Self.deleted {
                        failure = failure ?? "stage \(stage) could not start: \(error)"
                    }
                }
            }
            let (failed, statuses) = await runStage(deploymentID, plans)
            finals.merge(statuses) { $1 }
            if !failed.isEmpty, failure == nil {
                failure = "stage \(stage) failed (\(failed.joined(separator: ", ")))"
            }
        }
        // The statuses this run saw, unless a cancel changed some behind its back.
        let services = await isCanceled(deploymentID) ? (try? store.deployment(deploymentID))?.services : finals
        let final = services.flatMap { StatusRollup.deployment(Array($0.values)) }
        log.write("deployment ended: \(final?.rawValue ?? "unknown") in \(ServiceRun.format(ContinuousClock.now - started))", step: "", level: final?.isError == true ? .error : .info)
        var ended = PipelineEvent(kind: .deploymentEnded, environmentID: record.environmentID, deploymentID: deploymentID)
        ended.deploymentStatus = final
        hub.publish(ended)
    }

    /// Runs one stage's services, at most ``Limits/maxParallelServices`` at once; returns the names
    /// of those that did not succeed.
    private nonisolated func runStage(_ deploymentID: String, _ plans: [ServicePlan]) async -> (failed: [String], statuses: [String: DeploymentStatus]) {
        await withTaskGroup(of: (ServiceRun, Bool).self) { group in
            var failed: [String] = []
            var statuses: [String: DeploymentStatus] = [:]
            var next = 0
            func addNext() async {
                let plan = plans[next]
                next += 1
                let (run, task) = await spawn(deploymentID, plan)
                group.addTask { (run, await task.value) }
            }
            while next < min(plans.count, limits.maxParallelServices) { await addNext() }
            while let (run, succeeded) = await group.next() {
                if !succeeded { failed.append(run.plan.service.name) }
                statuses[run.plan.service.id] = run.status
                if next < plans.count { await addNext() }
            }
            return (failed.sorted(), statuses)
        }
    }

    /// What one service needs to run: its configuration (a rollback's from the release), version,
    /// and the release to fall back to when a rollout is canceled.
    private nonisolated func plan(_ record: PipelineStore.DeploymentRecord, _ environment: DeploymentEnvironment, _ serviceID: String, log: DeploymentLog) throws -> ServicePlan {
        var (service, configurationJSON, sealedSecrets, deleted) = try store.serviceSnapshot(serviceID)
        if deleted { throw Self.deleted }
        var rollback: PipelineStore.Release?
        var stored: (String, Data)? = (configurationJSON, sealedSecrets)
        if let releaseID = record.rollbackReleaseID {
            let release = try store.release(releaseID)
            service.configuration = release.configuration
            service.secrets = release.secrets
            rollback = release
            stored = nil
        }
        var work = ServiceWork(
            deploymentID: record.id, environment: environment, service: service, requestedVersion: record.details[serviceID]?.requestedVersion ?? "")
        work.organizationID = try store.organizationID(projectID: environment.projectID)
        if !work.requestedVersion.isEmpty {
            work.requestedCommitWasReleased = try store.hasRelease(serviceID: serviceID, commit: work.requestedVersion)
        }
        var resume: ServicePlan.Resume?
        if let status = record.services[serviceID], status.isRunning {
            let detail = record.details[serviceID]
            resume = .init(
                status: status, step: try store.runningStep(deploymentID: record.id, serviceID: serviceID),
                commit: detail?.commit ?? "", image: detail?.image ?? "")
        }
        return ServicePlan(action: record.action, work: work, rollback: rollback, stored: stored, log: log, resume: resume)
    }
}

/// One service's part of a running deployment.
struct ServicePlan: Sendable {
    var action: ServiceAction
    var work: ServiceWork
    /// Set for a rollback: the release deployed again.
    var rollback: PipelineStore.Release?
    /// The configuration (JSON) and secrets (sealed) as stored, when the work runs with them.
    var stored: (configurationJSON: String, sealedSecrets: Data)?
    var log: DeploymentLog
    /// Set when the service's work was running when the pipeline stopped: it goes on from there.
    var resume: Resume?
    var service: ManagedService { work.service }

    struct Resume: Sendable {
        var status: DeploymentStatus
        /// The step that was running (nil: none was recorded).
        var step: PipelineStore.Step?
        /// What the interrupted run had recorded: the commit built and the image, once known.
        var commit: String
        var image: String
    }
}
