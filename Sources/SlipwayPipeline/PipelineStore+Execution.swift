import Foundation
import GRDB

/// What running deployments write: several changes of one service in one transaction, so a step's
/// end, the next step's start and the status change either all happened or none did.
extension PipelineStore {
    /// A change to one service of a deployment, applied in one transaction by ``record(_:)``.
    public struct Change: Sendable {
        public var deploymentID: String
        public var serviceID: String
        /// Through the state machine (refused changes leave everything as it was).
        public var event: DeploymentStatus.Event?
        public var reason: String?
        public var endStep: (step: Step, status: StepStatus, message: String)?
        public var startStep: Step?
        public var commit: String?
        public var image: String?
        public var runningStatus: RunningStatus?
        /// Records a release of the service (image and the configuration it runs with).
        public var release: ReleaseDraft?
        /// A rollback makes the release's configuration and secrets the service's own again.
        public var restoreConfigurationFrom: String?
        /// The service is gone (DELETE succeeded): out of listings, its name free again.
        public var markDeleted = false

        public init(deploymentID: String, serviceID: String) {
            self.deploymentID = deploymentID
            self.serviceID = serviceID
        }
    }

    public struct ReleaseDraft: Sendable {
        public var commit: String
        public var image: String
        public var configuration: ServiceSpec
        public var secrets: [String: String]
        /// The same, as stored (``serviceSnapshot(_:)``): used as they are when given.
        public var configurationJSON: String?
        public var sealedSecrets: Data?
    }

    /// The service's status after the change and the release it recorded, if any. `announce` runs
    /// once the transaction has committed (what a watcher is told is on disk: a kill right after
    /// cannot take it back), and announcements follow the order of the writes (one lock around
    /// each write and its announcements).
    @discardableResult
    public func record(_ change: Change, announce: ((DeploymentStatus) -> Void)? = nil) throws -> (status: DeploymentStatus, releaseID: String?) {
        let prepared = try prepare(change)
        return try announceOrder.withLock { _ in
            let recorded = try write("deployment \(change.deploymentID)") { db in
                try Self.apply(change, prepared, db)
            }
            announce?(recorded.status)
            return recorded
        }
    }

    public typealias Recorded = (status: DeploymentStatus, releaseID: String?)

    /// ``record(_:announce:)`` for the running services of deployments: changes that arrive while
    /// another batch is being written are written together, in one transaction (each in its own
    /// savepoint, so one refused change does not undo the others). The caller waits without
    /// holding a thread; the first caller of a batch writes it.
    public func recordGrouped(_ change: Change, announce: (@Sendable (DeploymentStatus) -> Void)? = nil) async throws -> Recorded {
        let prepared = try prepare(change)
        return try await withCheckedThrowingContinuation { continuation in
            let leads = group.withLock { group -> Bool in
                group.pending.append(GroupedChange(change: change, prepared: prepared, announce: announce, continuation: continuation))
                if group.writing { return false }
                group.writing = true
                return true
            }
            if leads { writeGroups() }
        }
    }

    struct GroupedChange: Sendable {
        var change: Change
        var prepared: Prepared
        var announce: (@Sendable (DeploymentStatus) -> Void)?
        var continuation: CheckedContinuation<Recorded, any Error>
    }

    struct ChangeGroup: Sendable {
        var pending: [GroupedChange] = []
        var writing = false
    }

    /// Writes batches until none is waiting.
    private func writeGroups() {
        while true {
            let batch = group.withLock { group -> [GroupedChange] in
                if group.pending.isEmpty { group.writing = false }
                defer { group.pending = [] }
                return group.pending
            }
            if batch.isEmpty { return }
            var results: [Result<Recorded, any Error>] = []
            announceOrder.withLock { _ in
                do {
                    try write("deployment changes", acknowledged: false) { db in
                        results = []
                        for item in batch {
                            do {
                                var recorded: Recorded?
                                try db.inSavepoint {
                                    recorded = try Self.apply(item.change, item.prepared, db)
                                    return .commit
                                }
                                results.append(.success(recorded!))
                            } catch {
                                results.append(.failure(error))
                            }
                        }
                    }
                } catch {
                    results = batch.map { _ in .failure(error) }
                }
                // Committed: now watchers may hear of it, in the order of the batch.
                for (item, result) in zip(batch, results) {
                    if case .success(let recorded) = result { item.announce?(recorded.status) }
                }
            }
            for (item, result) in zip(batch, results) { item.continuation.resume(with: result) }
        }
    }

    /// What a change needs that is computed before the transaction (ids, encoding, sealing).
    struct Prepared: Sendable {
        var now: Double
        var releaseID: String?
        var release: (configuration: String, secrets: Data)?
    }

    func prepare(_ change: Change) throws -> Prepared {
        Prepared(
            now: Date().timeIntervalSince1970, releaseID: change.release.map { _ in Self.newID("rel") },
            release: try change.release.map { draft in
                (try draft.configurationJSON ?? Self.encode(draft.configuration), try draft.sealedSecrets ?? sealer.seal(draft.secrets))
            })
    }

    private static func apply(_ change: Change, _ prepared: Prepared, _ db: Database) throws -> Recorded {
        let now = prepared.now
        let releaseID = prepared.releaseID
        let sealedRelease = prepared.release
        do {
            guard let raw = try String.fetchOne(db.cachedStatement(sql: "SELECT status FROM deployment_service WHERE deployment_id = ? AND service_id = ?"),
                arguments: [change.deploymentID, change.serviceID]),
                var status = DeploymentStatus(rawValue: raw)
            else {
                throw Failure.notFound("service \(change.serviceID) in deployment \(change.deploymentID)")
            }
            if let event = change.event {
                let before = status
                do {
                    status = try status.applying(event)
                } catch {
                    throw Failure.invalidTransition("service \(change.serviceID) of deployment \(change.deploymentID): \(error)")
                }
                try db.cachedStatement(sql: "UPDATE deployment_service SET status = ?, reason = COALESCE(?, reason) WHERE deployment_id = ? AND service_id = ?").execute(
                    arguments: [status.rawValue, change.reason, change.deploymentID, change.serviceID])
                // The service shows its status in the last deployment that acted on it: one that ends
                // without having run (superseded, skipped, canceled while waiting) leaves it as it was.
                if !(before.isQueued && status.isFinal) {
                    try db.cachedStatement(sql: "UPDATE service SET deployment_status = ?, last_deployment_id = ? WHERE id = ?").execute(
                        arguments: [status.rawValue, change.deploymentID, change.serviceID])
                }
                // The deployment has started once one of its services has.
                if before.isQueued && status.isRunning {
                    try db.cachedStatement(sql: "UPDATE deployment SET started_at = COALESCE(started_at, ?) WHERE id = ?").execute(
                        arguments: [now, change.deploymentID])
                }
            }
            if let end = change.endStep {
                try db.cachedStatement(sql: "UPDATE deployment_step SET status = ?, ended_at = ?, message = ? WHERE deployment_id = ? AND service_id = ? AND step = ? AND status = ?").execute(
                    arguments: [end.status.rawValue, now, end.message, change.deploymentID, change.serviceID, end.step.rawValue, StepStatus.running.rawValue])
                if db.changesCount == 0 {
                    // A step that never started (skipped before it ran) is recorded as it ended.
                    try db.cachedStatement(sql: "INSERT OR REPLACE INTO deployment_step (deployment_id, service_id, step, status, started_at, ended_at, message) VALUES (?, ?, ?, ?, ?, ?, ?)").execute(
                        arguments: [change.deploymentID, change.serviceID, end.step.rawValue, end.status.rawValue, now, now, end.message])
                }
            }
            if let step = change.startStep {
                try db.cachedStatement(sql: "INSERT OR REPLACE INTO deployment_step (deployment_id, service_id, step, status, started_at) VALUES (?, ?, ?, ?, ?)").execute(
                    arguments: [change.deploymentID, change.serviceID, step.rawValue, StepStatus.running.rawValue, now])
            }
            if let commit = change.commit {
                try db.cachedStatement(sql: "UPDATE deployment_service SET commit_sha = ? WHERE deployment_id = ? AND service_id = ?").execute(
                    arguments: [commit, change.deploymentID, change.serviceID])
            }
            if let image = change.image {
                try db.cachedStatement(sql: "UPDATE deployment_service SET image = ? WHERE deployment_id = ? AND service_id = ?").execute(
                    arguments: [image, change.deploymentID, change.serviceID])
            }
            if let running = change.runningStatus {
                try db.cachedStatement(sql: "UPDATE service SET running_status = ? WHERE id = ?").execute(arguments: [running.rawValue, change.serviceID])
            }
            if let source = change.restoreConfigurationFrom {
                try db.cachedStatement(sql: "UPDATE service SET configuration = (SELECT configuration FROM release WHERE id = ?), secrets = (SELECT secrets FROM release WHERE id = ?) WHERE id = ?").execute(
                    arguments: [source, source, change.serviceID])
                // The release's custom domains again, but none another service claimed meanwhile
                // (the load balancer then refuses that route and says why).
                if let json = try String.fetchOne(db.cachedStatement(sql: "SELECT configuration FROM release WHERE id = ?"), arguments: [source]),
                   let spec = try? JSONDecoder().decode(ServiceSpec.self, from: Data(json.utf8)) {
                    try Self.claim(spec.customDomains, for: change.serviceID, db, skipTaken: true)
                }
            }
            if let draft = change.release, let releaseID, let (configuration, secrets) = sealedRelease {
                try db.cachedStatement(sql: "INSERT INTO release (id, service_id, deployment_id, created_at, commit_sha, image, configuration, secrets) VALUES (?, ?, ?, ?, ?, ?, ?, ?)").execute(
                    arguments: [releaseID, change.serviceID, change.deploymentID, now, draft.commit, draft.image, configuration, secrets])
                try db.cachedStatement(sql: "UPDATE deployment_service SET release_id = ? WHERE deployment_id = ? AND service_id = ?").execute(
                    arguments: [releaseID, change.deploymentID, change.serviceID])
            }
            if change.markDeleted {
                // The name is freed for a new service; the history keeps the name the deployment recorded.
                try db.cachedStatement(sql: "UPDATE service SET deleted_at = ?, running_status = NULL, name = name || '~deleted~' || id WHERE id = ?").execute(
                    arguments: [now, change.serviceID])
                try db.cachedStatement(sql: "DELETE FROM custom_domain WHERE service_id = ?").execute(arguments: [change.serviceID])
            }
            if change.event != nil { try Self.markEndedIfDone(db, change.deploymentID) }
            return (status, releaseID)
        }
    }

    /// The deployment an idempotency key already made in the environment, if any.
    public func deploymentID(environmentID: String, idempotencyKey: String) throws -> String? {
        try database.inDatabase { db in
            try String.fetchOne(
                db.cachedStatement(sql: "SELECT id FROM deployment WHERE environment_id = ? AND idempotency_key = ?"), arguments: [environmentID, idempotencyKey])
        }
    }

    /// A deployment not over yet, as a restarted pipeline finds it.
    public struct Unfinished: Sendable, Equatable {
        public var id: String
        public var environmentID: String
        public var action: ServiceAction
        public var started: Bool
        /// Services still queued in it, or running when the pipeline stopped (to resume).
        public var openServices: [String]
    }

    /// Deployments not over, oldest first (the order they were queued in).
    public func unfinishedDeployments() throws -> [Unfinished] {
        try database.inDatabase { db in
            try Row.fetchAll(
                db, sql: "SELECT id, environment_id, action, started_at FROM deployment WHERE ended_at IS NULL ORDER BY created_at, rowid"
            ).map { row in
                let id: String = row["id"]
                let open = try String.fetchAll(db.cachedStatement(sql: "SELECT service_id FROM deployment_service WHERE deployment_id = ? AND status IN (\(Self.unfinishedList)) ORDER BY service_id"),
                    arguments: [id])
                return Unfinished(
                    id: id, environmentID: row["environment_id"], action: ServiceAction(rawValue: row["action"]) ?? .deploy,
                    started: row["started_at"] as Double? != nil, openServices: open)
            }
        }
    }

    /// The step of a service's deployment that is running, if one is.
    public func runningStep(deploymentID: String, serviceID: String) throws -> Step? {
        try database.inDatabase { db in
            try String.fetchOne(
                db.cachedStatement(sql: "SELECT step FROM deployment_step WHERE deployment_id = ? AND service_id = ? AND status = ? ORDER BY started_at DESC LIMIT 1"),
                arguments: [deploymentID, serviceID, StepStatus.running.rawValue]
            ).flatMap(Step.init(rawValue:))
        }
    }

    // MARK: Releases

    public struct Release: Sendable, Equatable {
        public var id: String
        public var serviceID: String
        public var deploymentID: String
        public var createdAt: Date
        public var commit: String
        public var image: String
        public var configuration: ServiceSpec
        public var secrets: [String: String]
    }

    /// A service's releases, newest first.
    /// Whether a kept release of the service was built from `commit` (one indexed read: no
    /// configuration decoded, no secret opened).
    public func hasRelease(serviceID: String, commit: String) throws -> Bool {
        try database.inDatabase { db in
            try Bool.fetchOne(db.cachedStatement(sql: "SELECT EXISTS (SELECT 1 FROM release WHERE service_id = ? AND commit_sha = ?)"), arguments: [serviceID, commit]) ?? false
        }
    }

    /// The service's releases, newest first; only those built from `commit` when given.
    public func releases(serviceID: String, commit: String? = nil, limit: Int = 20) throws -> [Release] {
        let rows = try database.inDatabase { db in
            try Row.fetchAll(
                db.cachedStatement(sql: "SELECT * FROM release WHERE service_id = ? AND (?2 IS NULL OR commit_sha = ?2) ORDER BY created_at DESC, rowid DESC LIMIT ?3"),
                arguments: [serviceID, commit, max(1, min(limit, 500))])
        }
        return try rows.map(release(from:))
    }

    public func release(_ id: String) throws -> Release {
        guard let row = try database.inDatabase({ db in try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM release WHERE id = ?"), arguments: [id]) }) else {
            throw Failure.notFound("release \(id)")
        }
        return try release(from: row)
    }

    private func release(from row: Row) throws -> Release {
        Release(
            id: row["id"], serviceID: row["service_id"], deploymentID: row["deployment_id"],
            createdAt: Date(timeIntervalSince1970: row["created_at"]), commit: row["commit_sha"], image: row["image"],
            configuration: try JSONDecoder().decode(ServiceSpec.self, from: Data((row["configuration"] as String).utf8)),
            secrets: try sealer.open(row["secrets"]))
    }

    // MARK: Listings and statuses

    public func organizations() throws -> [Organization] {
        try database.inDatabase { db in
            try Row.fetchAll(db, sql: "SELECT id, name FROM organization ORDER BY name").map { Organization(id: $0["id"], name: $0["name"]) }
        }
    }

    public func projects(organizationID: String) throws -> [Project] {
        try database.inDatabase { db in
            try Self.require(db, "organization", organizationID)
            return try Row.fetchAll(db.cachedStatement(sql: "SELECT id, name FROM project WHERE organization_id = ? ORDER BY name"), arguments: [organizationID])
                .map { Project(id: $0["id"], organizationID: organizationID, name: $0["name"]) }
        }
    }

    public func environments(projectID: String) throws -> [DeploymentEnvironment] {
        try database.inDatabase { db in
            try Self.require(db, "project", projectID)
            return try Row.fetchAll(db.cachedStatement(sql: "SELECT id, name FROM environment WHERE project_id = ? ORDER BY name"), arguments: [projectID])
                .map { DeploymentEnvironment(id: $0["id"], projectID: projectID, name: $0["name"]) }
        }
    }

    public func environment(_ id: String) throws -> DeploymentEnvironment {
        guard let row = try database.inDatabase({ db in try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM environment WHERE id = ?"), arguments: [id]) }) else {
            throw Failure.notFound("environment \(id)")
        }
        return DeploymentEnvironment(id: id, projectID: row["project_id"], name: row["name"])
    }

    /// A service's statuses as the last deployment that touched it left them.
    public struct ServiceState: Sendable, Equatable {
        public var serviceID: String
        public var name: String
        public var deploymentStatus: DeploymentStatus?
        public var runningStatus: RunningStatus?
        public var lastDeploymentID: String?
    }

    public func serviceStates(environmentID: String) throws -> [ServiceState] {
        try database.inDatabase { db in
            try Self.require(db, "environment", environmentID)
            return try Row.fetchAll(db.cachedStatement(sql: "SELECT id, name, deployment_status, running_status, last_deployment_id FROM service WHERE environment_id = ? AND deleted_at IS NULL ORDER BY name"),
                arguments: [environmentID]
            ).map(Self.serviceState)
        }
    }

    public func serviceState(_ serviceID: String) throws -> ServiceState {
        let row = try database.inDatabase { db in
            try Row.fetchOne(db.cachedStatement(sql: "SELECT id, name, deployment_status, running_status, last_deployment_id FROM service WHERE id = ?"), arguments: [serviceID])
        }
        guard let row else { throw Failure.notFound("service \(serviceID)") }
        return Self.serviceState(row)
    }

    private static func serviceState(_ row: Row) -> ServiceState {
        ServiceState(
            serviceID: row["id"], name: row["name"],
            deploymentStatus: (row["deployment_status"] as String?).flatMap(DeploymentStatus.init(rawValue:)),
            runningStatus: (row["running_status"] as String?).flatMap(RunningStatus.init(rawValue:)),
            lastDeploymentID: row["last_deployment_id"])
    }

    /// What a deployment plan needs of an environment's services (no configuration, no secrets).
    public struct ServiceSummary: Sendable, Equatable {
        public var id: String
        public var name: String
        public var stage: Int
    }

    public func serviceSummaries(environmentID: String) throws -> [ServiceSummary] {
        try database.inDatabase { db in
            try Self.require(db, "environment", environmentID)
            return try Row.fetchAll(db.cachedStatement(sql: "SELECT id, name, json_extract(configuration, '$.stage') AS stage FROM service WHERE environment_id = ? AND deleted_at IS NULL ORDER BY name"),
                arguments: [environmentID]
            ).map { ServiceSummary(id: $0["id"], name: $0["name"], stage: $0["stage"] ?? 0) }
        }
    }

    /// The service's environment, or notFound (deleted services included: their history stays).
    public func isDeleted(serviceID: String) throws -> Bool {
        let deleted = try database.inDatabase { db in
            try Row.fetchOne(db.cachedStatement(sql: "SELECT deleted_at FROM service WHERE id = ?"), arguments: [serviceID])
        }
        guard let deleted else { throw Failure.notFound("service \(serviceID)") }
        return deleted["deleted_at"] as Double? != nil
    }
}

// MARK: Retention

extension PipelineStore {
    /// What a retention pass removed.
    public struct Pruned: Sendable, Equatable {
        public var deployments = 0
        public var serviceRecords = 0
        public var releases = 0
    }

    /// Keeps, per service, the newest `deploymentsPerService` finished deployments it took part in
    /// (its part of older ones, with their steps, is removed; a deployment left with no service is
    /// removed) and the newest `releasesPerService` releases. Running and queued deployments, and a
    /// service's newest release, are always kept.
    @discardableResult
    public func prune(deploymentsPerService: Int, releasesPerService: Int) throws -> Pruned {
        try write("retention", acknowledged: false) { db -> Pruned in
            var pruned = Pruned()
            try db.execute(sql: "DROP TABLE IF EXISTS temp.pruned_part")
            try db.execute(sql: """
                CREATE TEMP TABLE pruned_part AS
                SELECT deployment_id, service_id FROM (
                    SELECT ds.deployment_id, ds.service_id, d.ended_at,
                           ROW_NUMBER() OVER (PARTITION BY ds.service_id ORDER BY d.created_at DESC, d.rowid DESC) AS newest
                    FROM deployment_service ds JOIN deployment d ON d.id = ds.deployment_id)
                WHERE newest > ? AND ended_at IS NOT NULL
                """, arguments: [max(1, deploymentsPerService)])
            try db.execute(sql: """
                DELETE FROM deployment_step WHERE (deployment_id, service_id) IN (SELECT deployment_id, service_id FROM temp.pruned_part)
                """)
            try db.execute(sql: """
                DELETE FROM deployment_service WHERE (deployment_id, service_id) IN (SELECT deployment_id, service_id FROM temp.pruned_part)
                """)
            pruned.serviceRecords = db.changesCount
            try db.execute(sql: """
                DELETE FROM deployment WHERE id IN (SELECT DISTINCT deployment_id FROM temp.pruned_part)
                    AND NOT EXISTS (SELECT 1 FROM deployment_service WHERE deployment_id = deployment.id)
                """)
            pruned.deployments = db.changesCount
            try db.execute(sql: "DROP TABLE temp.pruned_part")
            try db.execute(sql: """
                DELETE FROM release WHERE id IN (
                    SELECT id FROM (
                        SELECT id, ROW_NUMBER() OVER (PARTITION BY service_id ORDER BY created_at DESC, rowid DESC) AS newest FROM release)
                    WHERE newest > ?)
                """, arguments: [max(1, releasesPerService)])
            pruned.releases = db.changesCount
            return pruned
        }
    }
}
