import Foundation
import SlipwayServiceKit
import Synchronization

/// One service's steps in a deployment, each recorded before it runs and when it ends (with the
/// status change in the same transaction), published to watchers and written to the deployment's
/// log:
///
/// - DEPLOY of an application: GIT_CLONE → BUILD (skipped when the image exists) → DEPLOYMENT →
///   ROUTER_DEPLOYMENT → CERTIFICATE (the last two skipped for a service without a public port);
///   of a container: MIRROR_IMAGE → DEPLOYMENT → ...; a rollback starts at DEPLOYMENT.
/// - RESTART and STOP: DEPLOYMENT. DELETE: DEPLOYMENT → ROUTER_DEPLOYMENT (routes removed).
struct ServiceRun {
    let context: PipelineEngine.Context
    let plan: ServicePlan

    private final class Progress: @unchecked Sendable {
        // Only touched by the service's own task, in order.
        var step: PipelineStore.Step?
        var stepStarted = ContinuousClock.now
        var status: DeploymentStatus?
        /// Shared with the watchdog task.
        let deadline = Mutex(Deadline())
    }

    /// The running step's deadline. The engine's one watchdog looks at every running service's
    /// (``PipelineEngine/watchdogPeriod``) instead of a timer per step.
    private struct Deadline {
        var at: ContinuousClock.Instant?
        var limit: Duration = .zero
        var expired = false
    }

    private let progress = Progress()

    init(context: PipelineEngine.Context, plan: ServicePlan) {
        self.context = context
        self.plan = plan
    }

    private var store: PipelineStore { context.store }
    private var work: ServiceWork { plan.work }
    private var name: String { plan.service.name }

    /// Marks the running step's deadline expired if it has passed; true when it did (the engine's
    /// watchdog then cancels the service's task, and the step fails as timed out).
    func expireIfLate(now: ContinuousClock.Instant) -> Bool {
        progress.deadline.withLock { deadline in
            guard let at = deadline.at, at <= now, !deadline.expired else { return false }
            deadline.expired = true
            return true
        }
    }

    /// The service's status after its last recorded change.
    var status: DeploymentStatus? { progress.status }

    /// True when the service ended in success.
    func run() async -> Bool {
        do {
            if let resume = plan.resume {
                // The pipeline stopped while this ran: go on from the step it was in.
                progress.step = resume.step
                progress.status = resume.status
                write("resumed\(resume.step.map { " at \($0.rawValue)" } ?? "") after a pipeline restart", step: resume.step ?? .deployment)
                if resume.status == .canceling { throw CancellationError() }
            }
            let resumeAt = plan.resume?.step
            switch plan.action {
            case .deploy: try await deploy()
            case .restart:
                if plan.resume == nil { try await change(.start, start: .deployment) }
                let running = try await timed(.deployment) { try await context.collaborators.cluster.restart(work) }
                try await change(.succeed, end: .succeeded, running: running)
            case .stop:
                if plan.resume == nil { try await change(.start, start: .deployment) }
                let running = try await timed(.deployment) { try await context.collaborators.cluster.stop(work) }
                try await change(.succeed, end: .succeeded, running: running)
            case .delete:
                if plan.resume == nil { try await change(.start, start: .deployment) }
                if resumeAt != .routerDeployment {
                    try await timed(.deployment) { try await context.collaborators.cluster.delete(work) }
                }
                if work.isPublic {
                    if resumeAt != .routerDeployment { try await change(nil, end: .succeeded, start: .routerDeployment) }
                    try await timed(.routerDeployment) { try await context.collaborators.network.removeRoutes(work) }
                }
                try await change(.succeed, end: .succeeded) { $0.markDeleted = true }
            }
            return true
        } catch {
            await ended(by: error)
            return false
        }
    }

    private func deploy() async throws {
        let image: BuiltImage
        let collaborators = context.collaborators
        let resume = plan.resume
        // Resumed at or after DEPLOYMENT: the image is the one the interrupted run had recorded.
        let resumedRollout = resume?.step.map { [.deployment, .routerDeployment, .certificate].contains($0) } ?? false
        if let release = plan.rollback {
            if resume == nil {
                try await change(.start, start: .deployment)
                write("deploying release \(release.id) again (\(release.image))", step: .deployment)
            }
            image = BuiltImage(commit: release.commit, image: release.image, skipped: true)
        } else if resumedRollout, let resume, !resume.image.isEmpty {
            var commit = resume.commit
            if commit.isEmpty, case .container(_, let tag) = work.service.configuration.source {
                commit = work.requestedVersion.isEmpty ? tag : work.requestedVersion
            }
            image = BuiltImage(commit: commit, image: resume.image, skipped: true)
        } else {
            switch work.service.configuration.source {
            case .application:
                if resume == nil {
                    try await change(.startBuild, start: .gitClone)
                } else if resume?.status == .deploying {
                    // Killed after the build was recorded but before the image was: build again (it is skipped).
                    try await change(nil, end: .failed, message: "interrupted before the image was recorded", start: .gitClone)
                }
                let (running, waiting) = await context.builds.load(work.organizationID)
                let slots = await context.builds.limit(work.organizationID)
                if running >= slots {
                    write("waiting for one of the organization's \(slots) build slots (\(running) running, \(waiting) waiting)", step: .gitClone)
                }
                let built = try await timed(progress.step ?? .gitClone, limit: context.limits.buildTimeout) { [self] in
                    try await context.builds.withSlot(work.organizationID) {
                        try await collaborators.images.build(work) { _ in
                            // The commit is fetched: GIT_CLONE ends, BUILD starts.
                            if progress.step == .gitClone { try? await change(nil, end: .succeeded, start: .build) }
                        }
                    }
                }
                if progress.step == .gitClone { try await change(nil, end: .succeeded, start: .build) }
                try await change(progress.status == .deploying ? nil : .start, end: built.skipped ? .skipped : .succeeded,
                                 message: built.skipped ? "the image is already in the registry" : "", start: .deployment) {
                    $0.commit = built.commit
                    $0.image = built.image
                }
                image = built
            case .container(_, let tag):
                if resume == nil {
                    try await change(.start, start: .mirrorImage)
                } else if progress.step != .mirrorImage {
                    try await change(nil, end: .failed, message: "interrupted before the image was recorded", start: .mirrorImage)
                }
                var mirrored = try await timed(.mirrorImage, limit: context.limits.buildTimeout) { try await collaborators.images.mirror(work) }
                mirrored.commit = work.requestedVersion.isEmpty ? tag : work.requestedVersion
                try await change(nil, end: mirrored.skipped ? .skipped : .succeeded, start: .deployment) { $0.image = mirrored.image }
                image = mirrored
            }
        }
        try await rollout(image, from: resumedRollout ? resume?.step ?? .deployment : .deployment)
    }

    /// DEPLOYMENT → ROUTER_DEPLOYMENT → CERTIFICATE from `from` on (a resumed run starts at the
    /// step it was in), then the release. The steps before `from` were recorded as done.
    private func rollout(_ image: BuiltImage, from: PipelineStore.Step) async throws {
        let collaborators = context.collaborators
        if from == .deployment {
            let running = try await timed(.deployment) { try await collaborators.cluster.deploy(work, image: image.image) }
            try await change(nil, end: .succeeded, start: .routerDeployment, running: running)
        }
        // The last step's end and the service's success are one write.
        var last = (status: PipelineStore.StepStatus.succeeded, message: "")
        if work.isPublic {
            if from != .certificate {
                try await timed(.routerDeployment) { try await collaborators.network.route(work) }
                try await change(nil, end: .succeeded, start: .certificate)
            }
            let note = try await timed(.certificate) { try await collaborators.certs.certificate(work) }
            if !note.isEmpty { last.message = note }
        } else {
            last = (.skipped, "no public port")
            if from != .certificate { try await change(nil, end: .skipped, message: last.message, start: .certificate) }
        }
        try await change(.succeed, end: last.status, message: last.message) { change in
            change.release = PipelineStore.ReleaseDraft(
                commit: image.commit, image: image.image, configuration: work.service.configuration, secrets: work.service.secrets,
                configurationJSON: plan.stored?.configurationJSON, sealedSecrets: plan.stored?.sealedSecrets)
            change.restoreConfigurationFrom = plan.rollback?.id
        }
    }

    /// Runs a step's work within its time limit. While the service doing it cannot be reached
    /// (stopped, restarting), the work is tried again with a growing pause (up to
    /// ``unavailableRetryCap``), each wait in the deployment's log.
    @discardableResult
    private func timed<T: Sendable>(_ step: PipelineStore.Step, limit: Duration? = nil, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let limit = limit ?? context.limits.stepTimeout
        progress.deadline.withLock { $0 = Deadline(at: .now + limit, limit: limit) }
        defer { progress.deadline.withLock { $0.at = nil } }
        var pause = Duration.milliseconds(250)
        var attempts = 0
        // Why the step was still waiting when its time ran out, if a service was unavailable.
        var unavailable: StepFailure?
        while true {
            do {
                return try await body()
            } catch {
                if progress.deadline.withLock({ $0.expired }) {
                    let why = ((error as? StepFailure).flatMap { $0.isUnavailable ? $0 : nil } ?? unavailable).map { ": \($0.message)" } ?? ""
                    throw StepFailure("did not finish within \(Self.format(limit)) (the step timed out)\(why)")
                }
                guard let failure = error as? StepFailure, failure.isUnavailable, !Task.isCancelled else { throw error }
                unavailable = failure
                attempts += 1
                // The first wait, then one line in ten: the log says what it waits for without filling up.
                if attempts % 10 == 1 { write("\(failure.message); trying again until it answers (attempt \(attempts))", step: step) }
                do {
                    try await Task.sleep(for: pause)
                } catch {
                    if progress.deadline.withLock({ $0.expired }) {
                        throw StepFailure("did not finish within \(Self.format(limit)) (the step timed out): \(failure.message)")
                    }
                    throw error
                }
                pause = min(pause * 2, Self.unavailableRetryCap)
            }
        }
    }

    /// The longest pause between two tries of a step whose service is unavailable.
    static let unavailableRetryCap = Duration.seconds(2)

    // MARK: Recording

    /// Records a status event, the end of the current step and the start of the next in one
    /// transaction, then publishes them and writes them to the deployment's log.
    private func change(
        _ event: DeploymentStatus.Event?, end: PipelineStore.StepStatus? = nil, message: String = "", start: PipelineStore.Step? = nil,
        running: RunningStatus? = nil, reason: String? = nil, _ more: (inout PipelineStore.Change) -> Void = { _ in }
    ) async throws {
        var change = PipelineStore.Change(deploymentID: work.deploymentID, serviceID: plan.service.id)
        change.event = event
        change.reason = reason
        change.runningStatus = running
        let ending = end.flatMap { status in progress.step.map { ($0, status) } }
        if let (step, status) = ending { change.endStep = (step, status, message) }
        change.startStep = start
        more(&change)
        // What watchers hear, published by the store in commit order.
        let hub = context.hub
        let ids = (environment: work.environment.id, deployment: work.deploymentID, service: plan.service.id)
        let announce: @Sendable (DeploymentStatus) -> Void = { status in
            func make(_ kind: PipelineEvent.Kind) -> PipelineEvent {
                PipelineEvent(kind: kind, environmentID: ids.environment, deploymentID: ids.deployment, serviceID: ids.service)
            }
            if let (step, stepStatus) = ending {
                var published = make(.step)
                published.step = step
                published.stepStatus = stepStatus
                published.message = message
                hub.publish(published)
            }
            if let start {
                var published = make(.step)
                published.step = start
                published.stepStatus = .running
                hub.publish(published)
            }
            if event != nil {
                var published = make(.deploymentStatus)
                published.deploymentStatus = status
                published.message = reason ?? ""
                hub.publish(published)
            }
            if let running {
                var published = make(.runningStatus)
                published.runningStatus = running
                hub.publish(published)
            }
        }
        let status: DeploymentStatus
        do {
            status = try await store.recordGrouped(change, announce: announce).status
        } catch PipelineStore.Failure.invalidTransition(let what) {
            // A cancel got there first: stop here, as canceled.
            let current = try? store.deployment(work.deploymentID).services[plan.service.id]
            if current == .canceling || current == .canceled { throw CancellationError() }
            throw StepFailure(what)
        }
        let elapsed = ContinuousClock.now - progress.stepStarted
        if let (step, stepStatus) = ending {
            let detail = message.isEmpty ? "" : ": \(message)"
            write("\(step.rawValue) \(stepStatus.rawValue.lowercased()) in \(Self.format(elapsed))\(detail)", step: step, error: stepStatus == .failed)
        }
        if let start {
            progress.step = start
            progress.stepStarted = .now
            write("\(start.rawValue) started", step: start)
        } else if ending != nil {
            progress.step = nil
        }
        if event != nil { progress.status = status }
    }

    /// The service's work stopped with `error`: a cancel ends it CANCELED (a rollout cut short goes
    /// back to the previous release), anything else ends it in its action's error status.
    private func ended(by error: any Error) async {
        let current = try? store.deployment(work.deploymentID).services[plan.service.id]
        let canceled = current == .canceling || current == .canceled
        let step = progress.step
        if canceled {
            if step == .deployment || step == .routerDeployment || step == .certificate {
                do {
                    // This deployment made no release (it did not succeed): the latest is the one before it.
                    let previous = try store.releases(serviceID: plan.service.id, limit: 1).first
                    // This task is cancelled: the rollback runs in its own, within the step time limit.
                    let (cluster, work, limit) = (context.collaborators.cluster, work, context.limits.stepTimeout)
                    let running = try await Task {
                        try await withTimeout(limit) { try await cluster.rollBack(work, to: previous) }
                    }.value
                    write("rolled back to \(previous.map { "release \($0.id)" } ?? "nothing (first deployment: removed)")", step: step ?? .deployment)
                    try? await change(nil, running: running ?? .stopped)
                } catch {
                    write("could not roll back after the cancel: \(error)", step: step ?? .deployment, error: true)
                }
            }
            try? await change(current == .canceling ? .canceled : nil, end: .canceled, message: "canceled", reason: "canceled")
            return
        }
        let message = (error as? StepFailure)?.message ?? "\(error)"
        let reason = "\(step?.rawValue ?? "step") failed: \(message)"
        context.logger.info("service step failed", metadata: ["deployment": "\(work.deploymentID)", "service": "\(name)", "reason": "\(reason)"])
        // A store that cannot write (a full disk) is tried again every second for up to 10 minutes:
        // the service must not stay "running" with nothing running it once space returns.
        for attempt in 1...600 {
            do {
                try await change(.fail, end: .failed, message: message, reason: reason)
                return
            } catch is CancellationError {
                return  // a cancel ended it meanwhile
            } catch is StepFailure {
                return  // refused by the state machine: it ended meanwhile
            } catch {
                if attempt == 1 {
                    context.logger.error(
                        "cannot record a failed step; trying again every second", metadata: ["deployment": "\(work.deploymentID)", "service": "\(name)", "error": "\(error)"])
                }
                // Not this task's sleep: it may be cancelled (a timed-out step), and the record must still be made.
                try? await Task.detached { try await Task.sleep(for: .seconds(1)) }.value
            }
        }
    }

    private func write(_ text: String, step: PipelineStore.Step, error: Bool = false) {
        plan.log.write("\(name): \(text)", step: step.rawValue, serviceID: plan.service.id, level: error ? .error : .info)
    }

    static func format(_ duration: Duration) -> String {
        let millis = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        guard millis >= 1000 else { return "\(millis) ms" }
        let hundredths = (millis + 5) / 10
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction) s"
    }
}
