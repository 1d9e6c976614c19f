import Foundation
import SlipwayServiceKit
import GRDB
import Synchronization

/// The pipeline's state in SQLite (GRDB): the model, deployments and their per-service statuses,
/// steps and releases. Versioned migrations; every write is one transaction in write-ahead-log mode,
/// so what a call returned has reached the operating system before anything acts on it: a killed
/// process loses nothing. ``Durability/full`` also waits for the disk (fsync) on every commit, for
/// power failures, at about 30 times the cost per write (BENCHMARKS.md).
public final class PipelineStore: Sendable {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case notFound(String)
        case alreadyExists(String)
        /// Something only one may hold, held by another (a custom domain): the whole message.
        case taken(String)
        /// An organization's quota would be exceeded: the whole message.
        case quota(String)
        case invalidTransition(String)

        public var description: String {
            switch self {
            case .notFound(let what): "\(what) does not exist"
            case .alreadyExists(let what): "\(what) already exists"
            case .taken(let message), .quota(let message): message
            case .invalidTransition(let what): what
            }
        }
    }

    let database: DatabaseQueue
    /// Changes waiting to be written together (``recordGrouped(_:announce:)``).
    let group = Mutex(ChangeGroup())
    /// Held around a status write and its announcements (``record(_:announce:)``).
    let announceOrder = Mutex(())
    /// Seals and opens the services' secrets (its key is `<directory>/secrets.key`).
    let sealer: SecretSealer

    public enum Durability: String, Sendable, CaseIterable {
        /// Every commit is in the write-ahead log, handed to the OS (survives a killed process).
        case normal
        /// As `normal`, and a commit a client's answer depends on (the model, a Deploy, a cancel)
        /// is flushed to the disk before the answer: what was acknowledged survives a power
        /// failure. A deployment's progress is not flushed one commit at a time: a power failure
        /// may take back its last steps' records, and the deployment resumes from the step before.
        case acknowledged
        /// Every commit is also flushed to the disk.
        case full
    }

    /// How commits reach the disk.
    public let durability: Durability

    /// Opens (creating if needed) `<directory>/pipeline.sqlite` and the secrets key
    /// `<directory>/secrets.key` (0600), and brings the schema up to date.
    /// What each organization may hold (checked where it is written).
    public let quotas: OrganizationQuotas

    public init(directory: String, durability: Durability = .acknowledged, quotas: OrganizationQuotas = OrganizationQuotas()) throws {
        self.quotas = quotas
        self.durability = durability
        // The database holds the whole model (variables in clear): the directory is the owner's alone.
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        chmod(directory, 0o700)
        sealer = try SecretSealer(keyFile: directory + "/secrets.key")
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(durability == .full ? "FULL" : "NORMAL")")
            try db.execute(sql: "PRAGMA foreign_keys = ON")
        }
        database = try DatabaseQueue(path: directory + "/pipeline.sqlite", configuration: configuration)
        _ = try database.writeWithoutTransaction { db in try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL") }
        for file in ["pipeline.sqlite", "pipeline.sqlite-wal", "pipeline.sqlite-shm"] { chmod(directory + "/" + file, 0o600) }
        try Self.migrator.migrate(database)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: model and deployments") { db in
            try db.execute(sql: """
                CREATE TABLE organization (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE);
                CREATE TABLE project (
                    id TEXT PRIMARY KEY, organization_id TEXT NOT NULL REFERENCES organization(id) ON DELETE CASCADE,
                    name TEXT NOT NULL, UNIQUE (organization_id, name));
                CREATE TABLE environment (
                    id TEXT PRIMARY KEY, project_id TEXT NOT NULL REFERENCES project(id) ON DELETE CASCADE,
                    name TEXT NOT NULL, UNIQUE (project_id, name));
                CREATE TABLE service (
                    id TEXT PRIMARY KEY, environment_id TEXT NOT NULL REFERENCES environment(id) ON DELETE CASCADE,
                    name TEXT NOT NULL, configuration TEXT NOT NULL, secrets BLOB NOT NULL,
                    deployment_status TEXT, UNIQUE (environment_id, name));
                CREATE TABLE deployment (
                    id TEXT PRIMARY KEY, environment_id TEXT NOT NULL REFERENCES environment(id) ON DELETE CASCADE,
                    action TEXT NOT NULL, origin TEXT NOT NULL, triggered_by TEXT NOT NULL,
                    idempotency_key TEXT, created_at REAL NOT NULL, ended_at REAL, reason TEXT,
                    UNIQUE (environment_id, idempotency_key));
                CREATE TABLE deployment_service (
                    deployment_id TEXT NOT NULL REFERENCES deployment(id) ON DELETE CASCADE,
                    service_id TEXT NOT NULL, version TEXT NOT NULL DEFAULT '', status TEXT NOT NULL,
                    reason TEXT, PRIMARY KEY (deployment_id, service_id));
                CREATE INDEX deployment_by_environment ON deployment(environment_id, created_at);
                """)
        }
        migrator.registerMigration("v2: per-step records") { db in
            try db.execute(sql: """
                CREATE TABLE deployment_step (
                    deployment_id TEXT NOT NULL REFERENCES deployment(id) ON DELETE CASCADE,
                    service_id TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL,
                    started_at REAL NOT NULL, ended_at REAL, message TEXT NOT NULL DEFAULT '',
                    PRIMARY KEY (deployment_id, service_id, step));
                """)
        }
        migrator.registerMigration("v3: execution, releases, running status") { db in
            try db.execute(sql: """
                ALTER TABLE deployment ADD COLUMN started_at REAL;
                ALTER TABLE deployment ADD COLUMN rollback_release_id TEXT;
                ALTER TABLE deployment_service ADD COLUMN service_name TEXT NOT NULL DEFAULT '';
                ALTER TABLE deployment_service ADD COLUMN stage INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE deployment_service ADD COLUMN commit_sha TEXT NOT NULL DEFAULT '';
                ALTER TABLE deployment_service ADD COLUMN image TEXT NOT NULL DEFAULT '';
                ALTER TABLE deployment_service ADD COLUMN release_id TEXT NOT NULL DEFAULT '';
                ALTER TABLE service ADD COLUMN running_status TEXT;
                ALTER TABLE service ADD COLUMN last_deployment_id TEXT;
                ALTER TABLE service ADD COLUMN deleted_at REAL;
                CREATE TABLE release (
                    id TEXT PRIMARY KEY, service_id TEXT NOT NULL REFERENCES service(id) ON DELETE CASCADE,
                    deployment_id TEXT NOT NULL, created_at REAL NOT NULL, commit_sha TEXT NOT NULL, image TEXT NOT NULL,
                    configuration TEXT NOT NULL, secrets BLOB NOT NULL);
                CREATE INDEX release_by_service ON release(service_id, created_at);
                CREATE INDEX deployment_unfinished ON deployment(ended_at) WHERE ended_at IS NULL;
                CREATE INDEX deployment_service_by_service ON deployment_service(service_id);
                """)
        }
        migrator.registerMigration("v4: custom domains claimed platform-wide") { db in
            try db.execute(sql: """
                CREATE TABLE custom_domain (
                    domain TEXT PRIMARY KEY, service_id TEXT NOT NULL REFERENCES service(id) ON DELETE CASCADE);
                CREATE INDEX custom_domain_by_service ON custom_domain(service_id);
                """)
            // Existing services keep what they had; of two with one domain, the older keeps it.
            for row in try Row.fetchAll(db, sql: "SELECT id, configuration FROM service WHERE deleted_at IS NULL ORDER BY rowid") {
                let spec = try? JSONDecoder().decode(ServiceSpec.self, from: Data((row["configuration"] as String).utf8))
                for domain in spec?.customDomains ?? [] {
                    try db.execute(sql: "INSERT OR IGNORE INTO custom_domain (domain, service_id) VALUES (?, ?)", arguments: [domain.lowercased(), row["id"] as String])
                }
            }
        }
        migrator.registerMigration("v5: default domain labels unique across the platform") { db in
            try db.execute(sql: """
                ALTER TABLE service ADD COLUMN domain_label TEXT;
                CREATE UNIQUE INDEX service_domain_label ON service(domain_label);
                """)
            let rows = try Row.fetchAll(db, sql: """
                SELECT service.id, service.name, environment.name AS environment_name FROM service
                JOIN environment ON environment.id = service.environment_id ORDER BY service.rowid
                """)
            for row in rows {
                let label = try Self.assignLabel(service: row["name"], environment: row["environment_name"], environmentID: nil, db)
                try db.execute(sql: "UPDATE service SET domain_label = ? WHERE id = ?", arguments: [label, row["id"] as String])
            }
        }
        migrator.registerMigration("v6: steps resumed after a restart") { db in
            try db.execute(sql: """
                ALTER TABLE deployment_step ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE deployment_step ADD COLUMN resumed_at REAL;
                """)
        }
        migrator.registerMigration("v7: an organization's own quotas") { db in
            try db.execute(sql: """
                CREATE TABLE organization_quota (
                    organization_id TEXT NOT NULL REFERENCES organization(id) ON DELETE CASCADE,
                    name TEXT NOT NULL,
                    value INTEGER NOT NULL,
                    PRIMARY KEY (organization_id, name)
                );
                """)
        }
        return migrator
    }

    /// A default-domain label no other service holds: `<service>-<environment>` (the environment's
    /// name made a DNS label), else with a random suffix. A service re-created under a deleted one's
    /// name in the same environment takes over its label (it keeps its address, suffixed or not), and
    /// so does another service of that environment for the plain `<service>-<environment>`; a label
    /// is never handed to another environment's service.
    static func assignLabel(service: String, environment: String, environmentID: String?, _ db: Database) throws -> String {
        var slug = ""
        for scalar in environment.lowercased().unicodeScalars {
            let ok = (scalar >= "a" && scalar <= "z") || (scalar >= "0" && scalar <= "9")
            if ok { slug.unicodeScalars.append(scalar) } else if !slug.hasSuffix("-") { slug += "-" }
        }
        slug = String(slug.trimmingCharacters(in: CharacterSet(charactersIn: "-")).prefix(24)).trimmingCharacters(in: CharacterSet(charactersIn: "-"))
        let base = String((service.lowercased() + (slug.isEmpty ? "" : "-" + slug)).prefix(56)).trimmingCharacters(in: CharacterSet(charactersIn: "-"))
        // A service re-created under its name in its environment gets back the label it had (deleted,
        // its name is `<name>~deleted~<id>`).
        if let environmentID, let previous = try Row.fetchOne(
            db.cachedStatement(sql: """
                SELECT id, domain_label FROM service WHERE environment_id = ? AND substr(name, 1, length(?) + 9) = ? || '~deleted~'
                AND deleted_at IS NOT NULL AND domain_label IS NOT NULL ORDER BY deleted_at DESC LIMIT 1
                """), arguments: [environmentID, service, service])
        {
            try db.cachedStatement(sql: "UPDATE service SET domain_label = NULL WHERE id = ?").execute(arguments: [previous["id"] as String])
            return previous["domain_label"]
        }
        var candidate = base
        for _ in 0..<50 {
            let holder = try Row.fetchOne(
                db.cachedStatement(sql: "SELECT id, environment_id, deleted_at FROM service WHERE domain_label = ?"), arguments: [candidate])
            guard let holder else { return candidate }
            if let environmentID, holder["environment_id"] as String == environmentID, holder["deleted_at"] as Double? != nil {
                try db.cachedStatement(sql: "UPDATE service SET domain_label = NULL WHERE id = ?").execute(arguments: [holder["id"] as String])
                return candidate
            }
            let suffix = String((0..<4).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! })
            candidate = base + "-" + suffix
        }
        throw Failure.taken("no free default domain label for \(service) in \(environment)")
    }

    // MARK: Model

    public func createOrganization(name: String) throws -> Organization {
        Organization(id: try insertNamed("organization", prefix: "org", name: name, parent: nil), name: name)
    }

    public func createProject(organizationID: String, name: String) throws -> Project {
        Project(id: try insertNamed("project", prefix: "prj", name: name, parent: ("organization", organizationID)), organizationID: organizationID, name: name)
    }

    /// The custom domains the service holds now (lowercase): a deployment planned earlier, or a
    /// rollback to a release whose domains another service took since, routes only these.
    public func claimedDomains(serviceID: String) throws -> Set<String> {
        try database.inDatabase { db in
            Set(try String.fetchAll(db.cachedStatement(sql: "SELECT domain FROM custom_domain WHERE service_id = ?"), arguments: [serviceID]))
        }
    }

    /// The TXT value that proves the organization owns `domain` (``SecretSealer/ownershipToken(organizationID:domain:)``).
    public func ownershipToken(organizationID: String, domain: String) -> String {
        sealer.ownershipToken(organizationID: organizationID, domain: domain)
    }

    // MARK: Quotas

    /// Each quota of the organization: (limit, used, set for it); concurrent-builds' use is the engine's.
    public func quotas(organizationID: String) throws -> [(name: String, limit: Int, used: Int, overridden: Bool)] {
        try database.inDatabase { db in
            try Self.require(db, "organization", organizationID)
            let own = try Self.quotaOverrides(organizationID, db)
            let used = try OrganizationQuotas.usage(organizationID, db)
            return OrganizationQuotas.names.map { name in (name, own[name] ?? quotas[name], used[name] ?? 0, own[name] != nil) }
        }
    }

    /// Sets the organization's own quotas (`limits`, each 1 to ``OrganizationQuotas/maxValue``) and
    /// removes those named in `reset` (back to the default). A quota lowered below what the
    /// organization holds refuses what would add to it; nothing is taken away.
    public func setQuotas(organizationID: String, limits: [String: Int], reset: [String]) throws {
        try write("quotas of organization \(organizationID)") { db in
            try Self.require(db, "organization", organizationID)
            for name in reset {
                try db.cachedStatement(sql: "DELETE FROM organization_quota WHERE organization_id = ? AND name = ?").execute(arguments: [organizationID, name])
            }
            for (name, value) in limits.sorted(by: { $0.key < $1.key }) {
                try db.cachedStatement(sql: "INSERT OR REPLACE INTO organization_quota (organization_id, name, value) VALUES (?, ?, ?)")
                    .execute(arguments: [organizationID, name, value])
            }
        }
    }

    /// Every organization's own value of quota `name`.
    public func quotaOverrides(named name: String) throws -> [String: Int] {
        try database.inDatabase { db in
            var values: [String: Int] = [:]
            for row in try Row.fetchAll(db.cachedStatement(sql: "SELECT organization_id, value FROM organization_quota WHERE name = ?"), arguments: [name]) {
                values[row["organization_id"]] = row["value"]
            }
            return values
        }
    }

    static func quotaOverrides(_ organizationID: String, _ db: Database) throws -> [String: Int] {
        var values: [String: Int] = [:]
        for row in try Row.fetchAll(db.cachedStatement(sql: "SELECT name, value FROM organization_quota WHERE organization_id = ?"), arguments: [organizationID]) {
            values[row["name"]] = row["value"]
        }
        return values
    }

    /// The organization a project belongs to ("" when the project is gone).
    public func organizationID(projectID: String) throws -> String {
        try database.inDatabase { db in try OrganizationQuotas.organization(ofProject: projectID, db) } ?? ""
    }

    public func createEnvironment(projectID: String, name: String) throws -> DeploymentEnvironment {
        DeploymentEnvironment(id: try insertNamed("environment", prefix: "env", name: name, parent: ("project", projectID)), projectID: projectID, name: name)
    }

    /// Inserts a named row under its parent (which must exist); returns the new id.
    private func insertNamed(_ table: String, prefix: String, name: String, parent: (table: String, id: String)?) throws -> String {
        let id = Self.newID(prefix)
        try write("\(table) \(name)") { db in
            if let parent {
                try Self.require(db, parent.table, parent.id)
                switch table {
                case "project": try quotas.checkNewProject(organizationID: parent.id, db)
                case "environment": try quotas.checkNewEnvironment(projectID: parent.id, db)
                default: break
                }
                try db.cachedStatement(sql: "INSERT INTO \(table) (id, \(parent.table)_id, name) VALUES (?, ?, ?)").execute(arguments: [id, parent.id, name])
            } else {
                try db.cachedStatement(sql: "INSERT INTO \(table) (id, name) VALUES (?, ?)").execute(arguments: [id, name])
            }
        }
        return id
    }

    public func createService(environmentID: String, name: String, configuration: ServiceSpec, secrets: [String: String] = [:]) throws -> ManagedService {
        var service = ManagedService(id: Self.newID("svc"), environmentID: environmentID, name: name, configuration: configuration, secrets: secrets)
        let sealed = try sealer.seal(secrets)
        let json = try Self.encode(configuration)
        service.domainLabel = try write("service \(name)") { db -> String in
            try Self.require(db, "environment", environmentID)
            let environmentName = try String.fetchOne(db.cachedStatement(sql: "SELECT name FROM environment WHERE id = ?"), arguments: [environmentID]) ?? ""
            // A name taken in the environment fails the INSERT; the label is chosen first, in the same transaction.
            if try Bool.fetchOne(db.cachedStatement(sql: "SELECT 1 FROM service WHERE environment_id = ? AND name = ?"), arguments: [environmentID, name]) == true {
                throw Failure.alreadyExists("service \(name)")
            }
            try quotas.checkService(configuration, serviceID: nil, environmentID: environmentID, db)
            let label = try Self.assignLabel(service: name, environment: environmentName, environmentID: environmentID, db)
            try db.cachedStatement(sql: "INSERT INTO service (id, environment_id, name, configuration, secrets, domain_label) VALUES (?, ?, ?, ?, ?, ?)").execute(
                arguments: [service.id, environmentID, name, json, sealed, label])
            try Self.claim(configuration.customDomains, for: service.id, db)
            return label
        }
        return service
    }

    /// Makes `domains` the service's custom domains, platform-wide: one another service holds is
    /// refused (ALREADY_EXISTS) when the service is saved, not when it is deployed. The other
    /// service is not named: it may be another organization's.
    static func claim(_ domains: [String], for serviceID: String, _ db: Database, skipTaken: Bool = false) throws {
        try db.cachedStatement(sql: "DELETE FROM custom_domain WHERE service_id = ?").execute(arguments: [serviceID])
        for domain in Set(domains.map { $0.lowercased() }).sorted() {
            let holder = try String.fetchOne(db.cachedStatement(sql: "SELECT service_id FROM custom_domain WHERE domain = ?"), arguments: [domain])
            if holder != nil {
                if skipTaken { continue }
                throw Failure.taken("custom domain \(domain) is already another service's: a domain is routed to one service only (remove it there first)")
            }
            try db.cachedStatement(sql: "INSERT INTO custom_domain (domain, service_id) VALUES (?, ?)").execute(arguments: [domain, serviceID])
        }
    }

    public func updateService(_ id: String, configuration: ServiceSpec, secrets: [String: String]) throws {
        let sealed = try sealer.seal(secrets)
        let json = try Self.encode(configuration)
        try write("service \(id)") { db in
            if let environmentID = try String.fetchOne(db.cachedStatement(sql: "SELECT environment_id FROM service WHERE id = ?"), arguments: [id]) {
                try quotas.checkService(configuration, serviceID: id, environmentID: environmentID, db)
            }
            try db.cachedStatement(sql: "UPDATE service SET configuration = ?, secrets = ? WHERE id = ?").execute(arguments: [json, sealed, id])
            guard db.changesCount == 1 else { throw Failure.notFound("service \(id)") }
            try Self.claim(configuration.customDomains, for: id, db)
        }
    }

    public func service(_ id: String) throws -> ManagedService {
        try serviceSnapshot(id).service
    }

    /// A service with its configuration as stored (JSON) and its secrets as stored (sealed): what a
    /// release records, without encoding or sealing them again.
    public func serviceSnapshot(_ id: String) throws -> (service: ManagedService, configurationJSON: String, sealedSecrets: Data, deleted: Bool) {
        let row = try database.inDatabase { db in try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM service WHERE id = ?"), arguments: [id]) }
        guard let row else { throw Failure.notFound("service \(id)") }
        let json: String = row["configuration"]
        let sealed: Data = row["secrets"]
        let service = ManagedService(
            id: row["id"], environmentID: row["environment_id"], name: row["name"],
            configuration: try JSONDecoder().decode(ServiceSpec.self, from: Data(json.utf8)), secrets: try sealer.open(sealed),
            domainLabel: row["domain_label"] ?? "")
        return (service, json, sealed, row["deleted_at"] as Double? != nil)
    }

    public func services(environmentID: String) throws -> [ManagedService] {
        let ids = try database.inDatabase { db in
            try String.fetchAll(db.cachedStatement(sql: "SELECT id FROM service WHERE environment_id = ? AND deleted_at IS NULL ORDER BY name"), arguments: [environmentID])
        }
        return try ids.map(service)
    }

    public func deleteOrganization(_ id: String) throws {
        try write("organization \(id)") { db in
            try db.cachedStatement(sql: "DELETE FROM organization WHERE id = ?").execute(arguments: [id])
            guard db.changesCount == 1 else { throw Failure.notFound("organization \(id)") }
        }
    }

    // MARK: Deployments

    public struct DeploymentRecord: Sendable, Equatable {
        public var id: String
        public var environmentID: String
        public var action: ServiceAction
        public var origin: DeploymentOrigin
        public var triggeredBy: String
        public var idempotencyKey: String?
        /// Per service: its status in this deployment.
        public var services: [String: DeploymentStatus]
        public var reasons: [String: String]
        public var ended: Bool
        public var createdAt = Date(timeIntervalSince1970: 0)
        public var startedAt: Date?
        public var endedAt: Date?
        public var rollbackReleaseID: String?
        /// Per service: what was deployed and how far it got.
        public var details: [String: ServiceDeploymentDetail] = [:]
    }

    /// One service of a deployment beyond its status.
    public struct ServiceDeploymentDetail: Sendable, Equatable {
        public var name: String
        public var stage: Int
        /// What was asked for: a commit, a tag, or empty for the branch head / the service's tag.
        public var requestedVersion: String
        public var commit: String
        public var image: String
        public var releaseID: String
    }

    /// A service as a deployment plans it.
    public struct PlannedService: Sendable, Equatable {
        public var id: String
        public var name: String
        public var stage: Int
        public var version: String

        public init(id: String, name: String = "", stage: Int = 0, version: String = "") {
            self.id = id
            self.name = name
            self.stage = stage
            self.version = version
        }
    }

    /// Records a new deployment with every service QUEUED (for its action), in one transaction;
    /// a retry with an idempotency key already recorded returns the existing deployment.
    public func recordDeployment(
        environmentID: String, action: ServiceAction, services: [String: String], origin: DeploymentOrigin, triggeredBy: String, idempotencyKey: String?
    ) throws -> (record: DeploymentRecord, created: Bool) {
        try recordDeployment(
            environmentID: environmentID, action: action, planned: services.map { PlannedService(id: $0.key, version: $0.value) },
            origin: origin, triggeredBy: triggeredBy, idempotencyKey: idempotencyKey)
    }

    public func recordDeployment(
        environmentID: String, action: ServiceAction, planned services: [PlannedService], origin: DeploymentOrigin, triggeredBy: String,
        idempotencyKey: String?, rollbackReleaseID: String? = nil
    ) throws -> (record: DeploymentRecord, created: Bool) {
        let id = Self.newID("dep")
        let createdAt = Date()
        let created = try write("deployment") { db -> Bool in
            try Self.require(db, "environment", environmentID)
            if let idempotencyKey, try String.fetchOne(db.cachedStatement(sql: "SELECT id FROM deployment WHERE environment_id = ? AND idempotency_key = ?"), arguments: [environmentID, idempotencyKey]) != nil {
                return false
            }
            try db.cachedStatement(sql: """
                    INSERT INTO deployment (id, environment_id, action, origin, triggered_by, idempotency_key, created_at, rollback_release_id)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """).execute(
                arguments: [id, environmentID, action.rawValue, origin.rawValue, triggeredBy, idempotencyKey, createdAt.timeIntervalSince1970, rollbackReleaseID])
            for service in services.sorted(by: { $0.id < $1.id }) {
                try db.cachedStatement(sql: "INSERT INTO deployment_service (deployment_id, service_id, service_name, stage, version, status) VALUES (?, ?, ?, ?, ?, ?)").execute(
                    arguments: [id, service.id, service.name, service.stage, service.version, DeploymentStatus.queued(action).rawValue])
            }
            return true
        }
        if created {
            // What was just written, without reading it back.
            let queued = DeploymentStatus.queued(action)
            var record = DeploymentRecord(
                id: id, environmentID: environmentID, action: action, origin: origin, triggeredBy: triggeredBy, idempotencyKey: idempotencyKey,
                services: Dictionary(uniqueKeysWithValues: services.map { ($0.id, queued) }), reasons: [:], ended: false,
                createdAt: createdAt, rollbackReleaseID: rollbackReleaseID)
            for service in services {
                record.details[service.id] = ServiceDeploymentDetail(
                    name: service.name, stage: service.stage, requestedVersion: service.version, commit: "", image: "", releaseID: "")
            }
            return (record, true)
        }
        let existing = try database.inDatabase { db in
            try String.fetchOne(db.cachedStatement(sql: "SELECT id FROM deployment WHERE environment_id = ? AND idempotency_key = ?"), arguments: [environmentID, idempotencyKey])
        }
        return (try deployment(existing!), false)
    }

    /// Moves one service of a deployment through the state machine; the new status is on disk when
    /// this returns. An impossible transition is refused and changes nothing.
    @discardableResult
    public func apply(_ event: DeploymentStatus.Event, deploymentID: String, serviceID: String, reason: String? = nil) throws -> DeploymentStatus {
        var change = Change(deploymentID: deploymentID, serviceID: serviceID)
        change.event = event
        change.reason = reason
        return try record(change).status
    }

    public func deployment(_ id: String) throws -> DeploymentRecord {
        // Columns by position: this read is on every deployment's path.
        try database.inDatabase { db in
            guard let row = try Row.fetchOne(
                db.cachedStatement(sql: """
                    SELECT environment_id, action, origin, triggered_by, idempotency_key, created_at, started_at, ended_at, rollback_release_id
                    FROM deployment WHERE id = ?
                    """), arguments: [id])
            else {
                throw Failure.notFound("deployment \(id)")
            }
            var services: [String: DeploymentStatus] = [:]
            var reasons: [String: String] = [:]
            var details: [String: ServiceDeploymentDetail] = [:]
            let serviceRows = try Row.fetchCursor(
                db.cachedStatement(sql: """
                    SELECT service_id, status, reason, service_name, stage, version, commit_sha, image, release_id
                    FROM deployment_service WHERE deployment_id = ?
                    """), arguments: [id])
            while let service = try serviceRows.next() {
                let serviceID: String = service[0]
                services[serviceID] = DeploymentStatus(rawValue: service[1])
                if let reason: String = service[2] { reasons[serviceID] = reason }
                details[serviceID] = ServiceDeploymentDetail(
                    name: service[3], stage: service[4], requestedVersion: service[5], commit: service[6], image: service[7], releaseID: service[8])
            }
            let date = { (index: Int) in (row[index] as Double?).map(Date.init(timeIntervalSince1970:)) }
            return DeploymentRecord(
                id: id, environmentID: row[0], action: ServiceAction(rawValue: row[1]) ?? .deploy,
                origin: DeploymentOrigin(rawValue: row[2]) ?? .api, triggeredBy: row[3],
                idempotencyKey: row[4], services: services, reasons: reasons, ended: row[7] as Double? != nil,
                createdAt: date(5) ?? Date(timeIntervalSince1970: 0), startedAt: date(6), endedAt: date(7),
                rollbackReleaseID: row[8], details: details)
        }
    }

    /// A service's work a stopped pipeline left in progress: it resumes at `step`.
    public struct Interrupted: Sendable, Equatable {
        public var deploymentID: String
        public var serviceID: String
        public var status: DeploymentStatus
        /// The step that was running (nil if none was: the status alone says where to go on).
        public var step: Step?
    }

    /// After a restart: every service left running in a deployment is to resume where it was. Its
    /// running step stays RUNNING (its start time, so its duration includes the outage) and counts
    /// the interruption, with the time it resumed. Returns the services to resume; queued ones stay
    /// queued and run in their turn.
    public func prepareResume(at time: Date = Date()) throws -> [Interrupted] {
        try write("resume", acknowledged: false) { db in
            let running = DeploymentStatus.allCases.filter(\.isRunning)
            let rows = try Row.fetchAll(db, sql: """
                SELECT s.deployment_id, s.service_id, s.status, st.step FROM deployment_service s
                LEFT JOIN deployment_step st ON st.deployment_id = s.deployment_id AND st.service_id = s.service_id AND st.status = '\(StepStatus.running.rawValue)'
                WHERE s.status IN (\(running.map { "'\($0.rawValue)'" }.joined(separator: ","))) ORDER BY s.deployment_id, s.service_id
                """)
            try db.cachedStatement(sql: "UPDATE deployment_step SET interruptions = interruptions + 1, resumed_at = ? WHERE status = ?").execute(
                arguments: [time.timeIntervalSince1970, StepStatus.running.rawValue])
            var seen = Set<String>()
            return rows.compactMap { row -> Interrupted? in
                guard let status = DeploymentStatus(rawValue: row["status"]) else { return nil }
                let key = "\(row["deployment_id"] as String)/\(row["service_id"] as String)"
                guard seen.insert(key).inserted else { return nil }
                return Interrupted(deploymentID: row["deployment_id"], serviceID: row["service_id"], status: status, step: (row["step"] as String?).flatMap(Step.init(rawValue:)))
            }
        }
    }

    /// Sets the deployment's end time once no service of it is queued or running.
    static func markEndedIfDone(_ db: Database, _ deploymentID: String) throws {
        let open = try Int.fetchOne(db.cachedStatement(sql: "SELECT COUNT(*) FROM deployment_service WHERE deployment_id = ? AND status IN (\(unfinishedList))"), arguments: [deploymentID]) ?? 0
        if open == 0 {
            try db.cachedStatement(sql: "UPDATE deployment SET ended_at = COALESCE(ended_at, ?) WHERE id = ?").execute(arguments: [Date().timeIntervalSince1970, deploymentID])
        }
    }

    static let unfinishedList = DeploymentStatus.allCases.filter { !$0.isFinal }.map { "'\($0.rawValue)'" }.joined(separator: ",")

    // MARK: Steps and history

    /// The steps of a service's deployment (docs/architecture.md).
    public enum Step: String, Sendable, CaseIterable, Codable {
        case gitClone = "GIT_CLONE", build = "BUILD", mirrorImage = "MIRROR_IMAGE", deployment = "DEPLOYMENT"
        case routerDeployment = "ROUTER_DEPLOYMENT", certificate = "CERTIFICATE"
    }

    public enum StepStatus: String, Sendable, Codable {
        case running = "RUNNING", succeeded = "SUCCEEDED", failed = "FAILED", skipped = "SKIPPED", canceled = "CANCELED"
    }

    public struct StepRecord: Sendable, Equatable {
        public var serviceID: String
        public var step: Step
        public var status: StepStatus
        public var startedAt: Date
        public var endedAt: Date?
        public var message: String
        /// Pipeline restarts the step lived through (it resumed after each).
        public var interruptions = 0
        /// When it last resumed after one.
        public var resumedAt: Date?
        public var duration: TimeInterval? { endedAt.map { $0.timeIntervalSince(startedAt) } }
    }

    /// Records that a step starts, before it is acted on.
    public func startStep(_ step: Step, deploymentID: String, serviceID: String, at time: Date = Date()) throws {
        try write("step \(step.rawValue)") { db in
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO deployment_step (deployment_id, service_id, step, status, started_at) VALUES (?, ?, ?, ?, ?)").execute(
                arguments: [deploymentID, serviceID, step.rawValue, StepStatus.running.rawValue, time.timeIntervalSince1970])
        }
    }

    /// Records how a running step ended.
    public func endStep(_ step: Step, deploymentID: String, serviceID: String, status: StepStatus, message: String = "", at time: Date = Date()) throws {
        try write("step \(step.rawValue)") { db in
            try db.cachedStatement(sql: "UPDATE deployment_step SET status = ?, ended_at = ?, message = ? WHERE deployment_id = ? AND service_id = ? AND step = ? AND status = ?").execute(
                arguments: [status.rawValue, time.timeIntervalSince1970, message, deploymentID, serviceID, step.rawValue, StepStatus.running.rawValue])
            guard db.changesCount == 1 else { throw Failure.notFound("running step \(step.rawValue) of \(serviceID) in deployment \(deploymentID)") }
        }
    }

    /// A deployment's steps in the order they started.
    public func steps(deploymentID: String) throws -> [StepRecord] {
        try database.inDatabase { db in
            try Row.fetchAll(db.cachedStatement(sql: "SELECT * FROM deployment_step WHERE deployment_id = ? ORDER BY started_at, rowid"), arguments: [deploymentID]).map { row in
                StepRecord(
                    serviceID: row["service_id"], step: Step(rawValue: row["step"]) ?? .build, status: StepStatus(rawValue: row["status"]) ?? .failed,
                    startedAt: Date(timeIntervalSince1970: row["started_at"]), endedAt: (row["ended_at"] as Double?).map(Date.init(timeIntervalSince1970:)),
                    message: row["message"], interruptions: row["interruptions"],
                    resumedAt: (row["resumed_at"] as Double?).map(Date.init(timeIntervalSince1970:)))
            }
        }
    }

    /// An environment's deployments, newest first, `limit` at a time; pass the last id of a page as
    /// `after` for the next one. Optionally only one action.
    public func history(
        environmentID: String, action: ServiceAction? = nil, serviceID: String? = nil, limit: Int = 20, after: String? = nil
    ) throws -> [DeploymentRecord] {
        let ids = try database.inDatabase { db -> [String] in
            var sql = "SELECT id FROM deployment WHERE environment_id = ?"
            var arguments: StatementArguments = [environmentID]
            if let action {
                sql += " AND action = ?"
                _ = arguments.append(contentsOf: [action.rawValue])
            }
            if let serviceID {
                sql += " AND id IN (SELECT deployment_id FROM deployment_service WHERE service_id = ?)"
                _ = arguments.append(contentsOf: [serviceID])
            }
            if let after, let cursor = try Row.fetchOne(db.cachedStatement(sql: "SELECT created_at, rowid FROM deployment WHERE id = ?"), arguments: [after]) {
                sql += " AND (created_at < ? OR (created_at = ? AND rowid < ?))"
                let created: Double = cursor["created_at"]
                let rowid: Int64 = cursor["rowid"]
                _ = arguments.append(contentsOf: [created, created, rowid])
            }
            sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
            _ = arguments.append(contentsOf: [max(1, min(limit, 500))])
            return try String.fetchAll(db.cachedStatement(sql: sql), arguments: arguments)
        }
        return try ids.map(deployment)
    }

    // MARK: Helpers

    /// One transaction. `acknowledged`: a client's answer depends on it (with durability
    /// `acknowledged`, it is flushed to the disk before this returns).
    func write<T>(_ what: String, acknowledged: Bool = true, _ body: (Database) throws -> T) throws -> T {
        do {
            guard durability == .acknowledged, acknowledged else { return try database.write(body) }
            return try database.writeWithoutTransaction { db in
                // The connection's default is NORMAL; this commit, and with it every earlier one in
                // the write-ahead log, is fsynced.
                try db.execute(sql: "PRAGMA synchronous = FULL")
                defer { try? db.execute(sql: "PRAGMA synchronous = NORMAL") }
                var result: T?
                try db.inTransaction {
                    result = try body(db)
                    return .commit
                }
                return result!
            }
        } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
            throw Failure.alreadyExists(what)
        }
    }

    static func require(_ db: Database, _ table: String, _ id: String) throws {
        guard try Bool.fetchOne(db.cachedStatement(sql: "SELECT 1 FROM \(table) WHERE id = ?"), arguments: [id]) == true else {
            throw Failure.notFound("\(table) \(id)")
        }
    }

    static func encode(_ configuration: ServiceSpec) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return String(decoding: try encoder.encode(configuration), as: UTF8.self)
    }

    static func newID(_ prefix: String) -> String {
        "\(prefix)_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(20)
    }
}
