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

    /// The running step's deadline, watched by one task per service run (cheaper than a timer
    /// task group per step): when it passes, the work is cancelled and the step fails as timed out.
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

    /// The longest the watchdog sleeps before looking at the deadline again (a step may move it earlier).
    static let watchdogSlice: Duration = .milliseconds(250)

    /// True when the service ended in success.
    func run() async -> Bool {
        await withTaskGroup(of: Bool?.self) { group in
            group.addTask { await work() }
            group.addTask {
                await watchdog()
                return nil
            }
            while let next = await group.next() {
                group.cancelAll()
                if let succeeded = next { return succeeded }
            }
            return false
        }
    }

    /// Returns when the deadline has passed (marking it expired) or when cancelled.
    private func watchdog() async {
        while !Task.isCancelled {
            let now = ContinuousClock.now
            let expired = progress.deadline.withLock { deadline -> Bool in
                guard let at = deadline.at, at <= now else { return false }
                deadline.expired = true
                return true
            }
            if expired { return }
            let until = progress.deadline.withLock { $0.at }.map { min($0, now + Self.watchdogSlice) } ?? now + Self.watchdogSlice
            try? await Task.sleep(until: until, clock: .continuous)
        }
    }

    private func work() async -> Bool {
        do {
            switch plan.action {
            case .deploy: try await deploy()
            case .restart:
                try change(.start, start: .deployment)
                let running = try await timed(.deployment) { try await context.collaborators.cluster.restart(work) }
                try change(.succeed, end: .succeeded, running: running)
            case .stop:
                try change(.start, start: .deployment)
                let running = try await timed(.deployment) { try await context.collaborators.cluster.stop(work) }
                try change(.succeed, end: .succeeded, running: running)
            case .delete:
                try change(.start, start: .deployment)
                try await timed(.deployment) { try await context.collaborators.cluster.delete(work) }
                if work.isPublic {
                    try change(nil, end: .succeeded, start: .routerDeployment)
                    try await timed(.routerDeployment) { try await context.collaborators.network.removeRoutes(work) }
                }
                try change(.succeed, end: .succeeded) { $0.markDeleted = true }
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
        if let release = plan.rollback {
            try change(.start, start: .deployment)
            image = BuiltImage(commit: release.commit, image: release.image, skipped: true)
            write("deploying release \(release.id) again (\(release.image))", step: .deployment)
        } else {
            switch work.service.configuration.source {
            case .application:
                try change(.startBuild, start: .gitClone)
                let built = try await timed(.gitClone, limit: context.limits.buildTimeout) { [self] in
                    try await collaborators.images.build(work) { _ in
                        // The commit is fetched: GIT_CLONE ends, BUILD starts.
                        if progress.step == .gitClone { try? change(nil, end: .succeeded, start: .build) }
                    }
                }
                if progress.step == .gitClone { try change(nil, end: .succeeded, start: .build) }
                try change(.start, end: built.skipped ? .skipped : .succeeded, message: built.skipped ? "the image is already in the registry" : "", start: .deployment) {
                    $0.commit = built.commit
                    $0.image = built.image
                }
                image = built
            case .container(_, let tag):
                try change(.start, start: .mirrorImage)
                var mirrored = try await timed(.mirrorImage, limit: context.limits.buildTimeout) { try await collaborators.images.mirror(work) }
                mirrored.commit = work.requestedVersion.isEmpty ? tag : work.requestedVersion
                try change(nil, end: mirrored.skipped ? .skipped : .succeeded, start: .deployment) { $0.image = mirrored.image }
                image = mirrored
            }
        }
        let running = try await timed(.deployment) { try await collaborators.cluster.deploy(work, image: image.image) }
        try change(nil, end: .succeeded, start: .routerDeployment, running: running)
        // The last step's end and the service's success are one write.
        var last = (status: PipelineStore.StepStatus.succeeded, message: "")
        if work.isPublic {
            try await timed(.routerDeployment) { try await collaborators.network.route(work) }
            try change(nil, end: .succeeded, start: .certificate)
            try await timed(.certificate) { try await collaborators.certs.certificate(work) }
        } else {
            last = (.skipped, "no public port")
            try change(nil, end: .skipped, message: last.message, start: .certificate)
        }
        try change(.succeed, end: last.status, message: last.message) { change in
            change.release = PipelineStore.ReleaseDraft(
                commit: image.commit, image: image.image, configuration: work.service.configuration, secrets: work.service.secrets,
                configurationJSON: plan.stored?.configurationJSON, sealedSecrets: plan.stored?.sealedSecrets)
            change.restoreConfigurationFrom = plan.rollback?.id
        }
    }

    /// Runs a step's work within its time limit.
    @discardableResult
    private func timed<T: Sendable>(_ step: PipelineStore.Step, limit: Duration? = nil, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let limit = limit ?? context.limits.stepTimeout
        progress.deadline.withLock { $0 = Deadline(at: .now + limit, limit: limit) }
        defer { progress.deadline.withLock { $0.at = nil } }
        do {
            return try await body()
        } catch {
            if progress.deadline.withLock({ $0.expired }) {
                throw StepFailure("did not finish within \(Self.format(limit)) (the step timed out)")
            }
            throw error
        }
    }

    // MARK: Recording

    /// Records a status event, the end of the current step and the start of the next in one
    /// transaction, then publishes them and writes them to the deployment's log.
    private func change(
        _ event: DeploymentStatus.Event?, end: PipelineStore.StepStatus? = nil, message: String = "", start: PipelineStore.Step? = nil,
        running: RunningStatus? = nil, reason: String? = nil, _ more: (inout PipelineStore.Change) -> Void = { _ in }
    ) throws {
        var change = PipelineStore.Change(deploymentID: work.deploymentID, serviceID: plan.service.id)
        change.event = event
        change.reason = reason
        change.runningStatus = running
        let ending = end.flatMap { status in progress.step.map { ($0, status) } }
        if let (step, status) = ending { change.endStep = (step, status, message) }
        change.startStep = start
        more(&change)
        let status: DeploymentStatus
        do {
            status = try store.record(change).status
        } catch PipelineStore.Failure.invalidTransition(let what) {
            // A cancel got there first: stop here, as canceled.
            let current = try? store.deployment(work.deploymentID).services[plan.service.id]
            if current == .canceling || current == .canceled { throw CancellationError() }
            throw StepFailure(what)
        }
        let elapsed = ContinuousClock.now - progress.stepStarted
        let environmentID = work.environment.id
        if let (step, stepStatus) = ending {
            var published = PipelineEvent(kind: .step, environmentID: environmentID, deploymentID: work.deploymentID, serviceID: plan.service.id)
            published.step = step
            published.stepStatus = stepStatus
            published.message = message
            context.hub.publish(published)
            let detail = message.isEmpty ? "" : ": \(message)"
            write("\(step.rawValue) \(stepStatus.rawValue.lowercased()) in \(Self.format(elapsed))\(detail)", step: step, error: stepStatus == .failed)
        }
        if let start {
            progress.step = start
            progress.stepStarted = .now
            var published = PipelineEvent(kind: .step, environmentID: environmentID, deploymentID: work.deploymentID, serviceID: plan.service.id)
            published.step = start
            published.stepStatus = .running
            context.hub.publish(published)
            write("\(start.rawValue) started", step: start)
        } else if ending != nil {
            progress.step = nil
        }
        if event != nil {
            progress.status = status
            var published = PipelineEvent(kind: .deploymentStatus, environmentID: environmentID, deploymentID: work.deploymentID, serviceID: plan.service.id)
            published.deploymentStatus = status
            published.message = reason ?? ""
            context.hub.publish(published)
        }
        if let running {
            var published = PipelineEvent(kind: .runningStatus, environmentID: environmentID, deploymentID: work.deploymentID, serviceID: plan.service.id)
            published.runningStatus = running
            context.hub.publish(published)
        }
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
                    let running = try await context.collaborators.cluster.rollBack(work, to: plan.previous)
                    write("rolled back to \(plan.previous.map { "release \($0.id)" } ?? "nothing (first deployment: removed)")", step: step ?? .deployment)
                    try? change(nil, running: running)
                } catch {
                    write("could not roll back after the cancel: \(error)", step: step ?? .deployment, error: true)
                }
            }
            try? change(current == .canceling ? .canceled : nil, end: .canceled, message: "canceled", reason: "canceled")
            return
        }
        let message = (error as? StepFailure)?.message ?? "\(error)"
        let reason = "\(step?.rawValue ?? "step") failed: \(message)"
        context.logger.info("service step failed", metadata: ["deployment": "\(work.deploymentID)", "service": "\(name)", "reason": "\(reason)"])
        do {
            try change(.fail, end: .failed, message: message, reason: reason)
        } catch {
            context.logger.error("cannot record a failed step", metadata: ["deployment": "\(work.deploymentID)", "service": "\(name)", "error": "\(error)"])
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
