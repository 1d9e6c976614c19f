/// What a deployment does to a service (docs/architecture.md: DEPLOY, RESTART, STOP, DELETE).
public enum ServiceAction: String, Sendable, CaseIterable, Codable {
    case deploy = "DEPLOY"
    case restart = "RESTART"
    case stop = "STOP"
    case delete = "DELETE"
}

/// The deployment status of one service, with Qovery's names: the deploy set (QUEUED, BUILDING,
/// BUILD_ERROR, DEPLOYING, DEPLOYED, DEPLOYMENT_ERROR, CANCELING, CANCELED, SKIPPED) and, for
/// RESTART, STOP and DELETE, X_QUEUED, X-ING, X-ED, X_ERROR.
///
/// Every change goes through ``applying(_:)``, the one state machine: it refuses what cannot happen
/// (a service cannot go from DEPLOYED to BUILDING without being queued first), so a bug or a stale
/// message shows up as an error instead of a status nobody can explain.
public enum DeploymentStatus: String, Sendable, CaseIterable, Codable {
    case queued = "QUEUED"
    case building = "BUILDING"
    case buildError = "BUILD_ERROR"
    case deploying = "DEPLOYING"
    case deployed = "DEPLOYED"
    case deploymentError = "DEPLOYMENT_ERROR"
    case canceling = "CANCELING"
    case canceled = "CANCELED"
    case skipped = "SKIPPED"
    case restartQueued = "RESTART_QUEUED"
    case restarting = "RESTARTING"
    case restarted = "RESTARTED"
    case restartError = "RESTART_ERROR"
    case stopQueued = "STOP_QUEUED"
    case stopping = "STOPPING"
    case stopped = "STOPPED"
    case stopError = "STOP_ERROR"
    case deleteQueued = "DELETE_QUEUED"
    case deleting = "DELETING"
    case deleted = "DELETED"
    case deleteError = "DELETE_ERROR"

    /// What happens to a service's deployment.
    public enum Event: Sendable, Equatable {
        /// A deployment with this action is queued for the service.
        case queue(ServiceAction)
        /// Work starts: the build (deploy of an application whose image must be built).
        case startBuild
        /// Work starts or moves on: rolling out (deploy), or the action itself (restart, stop, delete).
        case start
        case succeed
        case fail
        /// Someone asked to cancel: a queued deployment ends at once, a running one is stopped.
        case cancel
        /// The work in progress has stopped after a cancel.
        case canceled
        /// A newer deployment of the same service replaced this queued one, or the service had
        /// nothing to do (an earlier stage failed): it never ran.
        case skip
    }

    public struct InvalidTransition: Error, Sendable, Equatable, CustomStringConvertible {
        public var from: DeploymentStatus
        public var event: Event
        public var description: String { "a service in \(from.rawValue) cannot take \(event)" }
    }

    /// The action this status belongs to.
    public var action: ServiceAction {
        switch self {
        case .queued, .building, .buildError, .deploying, .deployed, .deploymentError, .canceling, .canceled, .skipped: .deploy
        case .restartQueued, .restarting, .restarted, .restartError: .restart
        case .stopQueued, .stopping, .stopped, .stopError: .stop
        case .deleteQueued, .deleting, .deleted, .deleteError: .delete
        }
    }

    /// Waiting for its turn in the environment's queue.
    public var isQueued: Bool { [.queued, .restartQueued, .stopQueued, .deleteQueued].contains(self) }

    /// Work is running for it (a crash leaves it here: the work resumes when the pipeline restarts).
    public var isRunning: Bool { [.building, .deploying, .canceling, .restarting, .stopping, .deleting].contains(self) }

    /// The deployment is over for this service.
    public var isFinal: Bool { !isQueued && !isRunning }

    public var isError: Bool { [.buildError, .deploymentError, .restartError, .stopError, .deleteError].contains(self) }

    /// The queued status of `action`.
    public static func queued(_ action: ServiceAction) -> DeploymentStatus {
        switch action {
        case .deploy: .queued
        case .restart: .restartQueued
        case .stop: .stopQueued
        case .delete: .deleteQueued
        }
    }

    /// The status after `event`, or ``InvalidTransition``.
    public func applying(_ event: Event) throws(InvalidTransition) -> DeploymentStatus {
        if let next = Self.next(self, event) { return next }
        throw InvalidTransition(from: self, event: event)
    }

    /// The status of a service that has never been deployed, after `event` (only queueing is possible).
    public static func initial(_ event: Event) throws(InvalidTransition) -> DeploymentStatus {
        guard case .queue(let action) = event else { throw InvalidTransition(from: .skipped, event: event) }
        return queued(action)
    }

    private static func next(_ status: DeploymentStatus, _ event: Event) -> DeploymentStatus? {
        switch (status, event) {
        // A new deployment can be queued once the previous one is over; a deleted service is gone.
        case (let from, .queue(let action)) where from.isFinal && from != .deleted:
            return queued(action)

        case (.queued, .startBuild): return .building
        case (.queued, .start), (.building, .start): return .deploying
        case (.building, .fail): return .buildError
        case (.deploying, .succeed): return .deployed
        case (.deploying, .fail): return .deploymentError

        case (.restartQueued, .start): return .restarting
        case (.restarting, .succeed): return .restarted
        case (.restarting, .fail): return .restartError
        case (.stopQueued, .start): return .stopping
        case (.stopping, .succeed): return .stopped
        case (.stopping, .fail): return .stopError
        case (.deleteQueued, .start): return .deleting
        case (.deleting, .succeed): return .deleted
        case (.deleting, .fail): return .deleteError

        // Cancel: what has not started ends at once; a build or a rollout is stopped (the service
        // being deployed is rolled back). Restart, stop and delete in progress run to their end.
        case (let from, .cancel) where from.isQueued: return .canceled
        case (.building, .cancel), (.deploying, .cancel): return .canceling
        case (.canceling, .canceled): return .canceled
        // The work finished or failed before the cancel reached it.
        case (.canceling, .succeed): return .deployed
        case (.canceling, .fail): return .deploymentError

        case (let from, .skip) where from.isQueued: return .skipped
        default: return nil
        }
    }
}

/// The running status of a service's instances, independent of its deployments (docs/architecture.md).
public enum RunningStatus: String, Sendable, CaseIterable, Codable {
    case starting = "STARTING"
    case running = "RUNNING"
    /// Some instances are unhealthy.
    case warning = "WARNING"
    /// All instances are unhealthy.
    case error = "ERROR"
    case stopping = "STOPPING"
    case stopped = "STOPPED"
}

/// An environment's statuses, rolled up from its services'.
public enum StatusRollup {
    /// The environment's deployment status: work in progress first (the most advanced step any
    /// service is at), then the first kind of error, then cancellation, then success. Services
    /// SKIPPED count only when every service was skipped.
    public static func deployment(_ services: [DeploymentStatus]) -> DeploymentStatus? {
        let considered = services.filter { $0 != .skipped }
        guard !considered.isEmpty else { return services.isEmpty ? nil : .skipped }
        let order: [DeploymentStatus] = [
            .canceling, .deleting, .stopping, .restarting, .deploying, .building,
            .deleteQueued, .stopQueued, .restartQueued, .queued,
            .buildError, .deploymentError, .restartError, .stopError, .deleteError,
            .canceled,
            .deleted, .stopped, .restarted, .deployed,
        ]
        return order.first { considered.contains($0) } ?? considered[0]
    }

    /// The environment's running status: all the same → that; some instances of some service in
    /// trouble while others run → WARNING; nothing running and something in ERROR → ERROR.
    public static func running(_ services: [RunningStatus]) -> RunningStatus? {
        guard let first = services.first else { return nil }
        if services.allSatisfy({ $0 == first }) { return first }
        let set = Set(services)
        if set.contains(.starting) { return .starting }
        if set.contains(.stopping) { return .stopping }
        if set.contains(.running) || set.contains(.warning) {
            return set.isSubset(of: [.running, .stopped]) ? .running : .warning
        }
        if set.contains(.error) { return .error }
        return .stopped
    }
}
