import Foundation
import GRDB

/// The gateway's own state in SQLite (`<data>/gateway/gateway.sqlite`): API tokens (hashed),
/// webhook secrets per service, and every webhook delivery with what it did. The file is 0600.
public final class GatewayStore: Sendable {
    let database: DatabaseQueue

    public init(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // Webhook secrets are in the database in clear (HMAC needs them): the directory, with the
        // WAL files SQLite makes beside the database, is the owner's alone.
        chmod(directory, 0o700)
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            // Tokens and webhook deliveries are acknowledged to their callers (a 202 once the
            // delivery is recorded): each commit is on the disk before the answer. Few and small.
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        let path = directory + "/gateway.sqlite"
        database = try DatabaseQueue(path: path, configuration: configuration)
        chmod(path, 0o600)
        _ = try database.writeWithoutTransaction { db in try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL") }
        try Self.migrator.migrate(database)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: tokens, webhooks, deliveries") { db in
            try db.execute(sql: """
                CREATE TABLE token (
                    id TEXT PRIMARY KEY, name TEXT NOT NULL, secret_hash TEXT NOT NULL,
                    organization_id TEXT NOT NULL, project_id TEXT NOT NULL, role INTEGER NOT NULL,
                    rate_limit INTEGER NOT NULL, created_at INTEGER NOT NULL, revoked_at INTEGER NOT NULL DEFAULT 0,
                    created_by TEXT NOT NULL);
                CREATE INDEX token_by_organization ON token(organization_id);
                CREATE TABLE webhook (service_id TEXT PRIMARY KEY, secret TEXT NOT NULL, created_at INTEGER NOT NULL);
                CREATE TABLE delivery (
                    id TEXT PRIMARY KEY, service_id TEXT NOT NULL, provider INTEGER NOT NULL, delivery_id TEXT NOT NULL,
                    event TEXT NOT NULL, ref TEXT NOT NULL, commit_sha TEXT NOT NULL, files TEXT NOT NULL,
                    received_at INTEGER NOT NULL, outcome INTEGER NOT NULL, reason TEXT NOT NULL,
                    deployment_id TEXT NOT NULL, http_status INTEGER NOT NULL, sequence INTEGER NOT NULL);
                CREATE UNIQUE INDEX delivery_once ON delivery(service_id, provider, delivery_id) WHERE outcome != 5;
                CREATE INDEX delivery_by_service ON delivery(service_id, sequence);
                CREATE INDEX delivery_pending ON delivery(outcome) WHERE outcome = 1;
                """)
        }
        migrator.registerMigration("v2: a delivery id counts once it was verified and accepted, ignored or is being acted on") { db in
            try db.execute(sql: """
                DROP INDEX delivery_once;
                CREATE UNIQUE INDEX delivery_once ON delivery(service_id, provider, delivery_id) WHERE outcome IN (1, 2, 3);
                """)
        }
        return migrator
    }

    /// Deliveries kept per service (older ones are deleted as new ones arrive).
    static let deliveriesKept = 1000

    // MARK: Tokens

    struct TokenRecord: Sendable, Equatable {
        var id: String
        var name: String
        var secretHash: String
        var organizationID: String
        var projectID: String
        var role: Int32
        var rateLimit: UInt32
        var createdAt: Int64
        var revokedAt: Int64
        var createdBy: String

        init(row: Row) {
            id = row["id"]; name = row["name"]; secretHash = row["secret_hash"]
            organizationID = row["organization_id"]; projectID = row["project_id"]; role = row["role"]
            rateLimit = UInt32(clamping: row["rate_limit"] as Int64); createdAt = row["created_at"]; revokedAt = row["revoked_at"]
            createdBy = row["created_by"]
        }

        init(id: String, name: String, secretHash: String, organizationID: String, projectID: String, role: Int32, rateLimit: UInt32, createdAt: Int64, createdBy: String) {
            self.id = id; self.name = name; self.secretHash = secretHash; self.organizationID = organizationID
            self.projectID = projectID; self.role = role; self.rateLimit = rateLimit; self.createdAt = createdAt
            self.revokedAt = 0; self.createdBy = createdBy
        }
    }

    func insert(_ token: TokenRecord) throws {
        try database.write { db in
            try db.execute(
                sql: """
                    INSERT INTO token (id, name, secret_hash, organization_id, project_id, role, rate_limit, created_at, created_by)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [token.id, token.name, token.secretHash, token.organizationID, token.projectID, token.role, Int64(token.rateLimit), token.createdAt, token.createdBy])
        }
    }

    func token(id: String) throws -> TokenRecord? {
        try database.read { db in try Row.fetchOne(db, sql: "SELECT * FROM token WHERE id = ?", arguments: [id]).map(TokenRecord.init(row:)) }
    }

    /// Tokens of an organization (empty: the platform's own), oldest first.
    func tokens(organizationID: String) throws -> [TokenRecord] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM token WHERE organization_id = ? ORDER BY created_at, id", arguments: [organizationID]).map(TokenRecord.init(row:))
        }
    }

    func revoke(id: String, at millis: Int64) throws -> TokenRecord? {
        try database.write { db in
            try db.execute(sql: "UPDATE token SET revoked_at = ? WHERE id = ? AND revoked_at = 0", arguments: [millis, id])
            let record = try Row.fetchOne(db, sql: "SELECT * FROM token WHERE id = ?", arguments: [id]).map(TokenRecord.init(row:))
            try Self.pruneRevoked(db, now: millis, organizationID: record?.organizationID)
            return record
        }
    }

    /// Revoked tokens are kept (to answer "revoked" rather than "not valid") for this long...
    static let revokedKeptMillis: Int64 = 30 * 24 * 3600 * 1000
    /// ...and at most this many per organization.
    static let revokedKeptPerOrganization = 1000

    /// Removes revoked tokens past their time, and an organization's beyond the newest kept.
    static func pruneRevoked(_ db: Database, now: Int64, organizationID: String?) throws {
        try db.execute(sql: "DELETE FROM token WHERE revoked_at > 0 AND revoked_at < ?", arguments: [now - revokedKeptMillis])
        guard let organizationID else { return }
        try db.execute(
            sql: """
                DELETE FROM token WHERE organization_id = ? AND revoked_at > 0 AND id NOT IN (
                    SELECT id FROM token WHERE organization_id = ? AND revoked_at > 0 ORDER BY revoked_at DESC, rowid DESC LIMIT ?)
                """,
            arguments: [organizationID, organizationID, revokedKeptPerOrganization])
    }

    /// At start: revoked tokens past their time.
    func pruneRevokedTokens(now: Int64) throws {
        try database.write { db in try Self.pruneRevoked(db, now: now, organizationID: nil) }
    }

    // MARK: Webhooks

    func setWebhook(serviceID: String, secret: String, at millis: Int64) throws {
        try database.write { db in
            try db.execute(
                sql: "INSERT INTO webhook (service_id, secret, created_at) VALUES (?, ?, ?) ON CONFLICT(service_id) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at",
                arguments: [serviceID, secret, millis])
        }
    }

    func webhookSecret(serviceID: String) throws -> String? {
        try database.read { db in try String.fetchOne(db, sql: "SELECT secret FROM webhook WHERE service_id = ?", arguments: [serviceID]) }
    }

    // MARK: Deliveries

    struct DeliveryRecord: Sendable, Equatable {
        var id: String
        var serviceID: String
        var provider: Int32
        var deliveryID: String
        var event: String
        var ref: String = ""
        var commit: String = ""
        /// Changed paths (nil: the payload does not list them), JSON in the table.
        var files: [String]? = nil
        var receivedAt: Int64
        var outcome: Int32
        var reason: String = ""
        var deploymentID: String = ""
        var httpStatus: Int = 0

        init(id: String, serviceID: String, provider: Int32, deliveryID: String, event: String, receivedAt: Int64, outcome: Int32) {
            self.id = id; self.serviceID = serviceID; self.provider = provider; self.deliveryID = deliveryID
            self.event = event; self.receivedAt = receivedAt; self.outcome = outcome
        }

        init(row: Row) {
            id = row["id"]; serviceID = row["service_id"]; provider = row["provider"]; deliveryID = row["delivery_id"]
            event = row["event"]; ref = row["ref"]; commit = row["commit_sha"]; receivedAt = row["received_at"]
            outcome = row["outcome"]; reason = row["reason"]; deploymentID = row["deployment_id"]; httpStatus = row["http_status"]
            let text: String = row["files"]
            files = text.isEmpty ? nil : (try? JSONDecoder().decode([String].self, from: Data(text.utf8)))
        }
    }

    /// Records a delivery. Returns the earlier record instead when `(service, provider, delivery id)`
    /// was recorded before as received, deployed or ignored (the new one is then not written).
    func recordFirst(_ delivery: DeliveryRecord) throws -> DeliveryRecord? {
        try database.write { db in
            if let earlier = try Row.fetchOne(
                db, sql: "SELECT * FROM delivery WHERE service_id = ? AND provider = ? AND delivery_id = ? AND outcome IN (1, 2, 3)",
                arguments: [delivery.serviceID, delivery.provider, delivery.deliveryID]) {
                return DeliveryRecord(row: earlier)
            }
            try Self.insert(delivery, db)
            return nil
        }
    }

    /// Records a delivery unconditionally (rejections, duplicates).
    func record(_ delivery: DeliveryRecord) throws {
        try database.write { db in try Self.insert(delivery, db) }
    }

    private static func insert(_ delivery: DeliveryRecord, _ db: Database) throws {
        let files = delivery.files.map { String(decoding: (try? JSONEncoder().encode($0)) ?? Data("[]".utf8), as: UTF8.self) } ?? ""
        let sequence = (try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(sequence), 0) + 1 FROM delivery")) ?? 1
        try db.execute(
            sql: """
                INSERT INTO delivery (id, service_id, provider, delivery_id, event, ref, commit_sha, files, received_at, outcome, reason, deployment_id, http_status, sequence)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [
                delivery.id, delivery.serviceID, delivery.provider, delivery.deliveryID, delivery.event, delivery.ref, delivery.commit, files,
                delivery.receivedAt, delivery.outcome, delivery.reason, delivery.deploymentID, delivery.httpStatus, sequence,
            ])
        // Verified deliveries (received, deployed, ignored: the dedupe and replay records) and the
        // rest (rejected, duplicates: anyone can produce those) are kept apart, each the newest
        // `deliveriesKept`, so junk never pushes a verified record out.
        let verified = Self.verifiedOutcomes.contains(delivery.outcome)
        let set = verified ? "(1, 2, 3)" : "(0, 4, 5)"
        try db.execute(
            sql: """
                DELETE FROM delivery WHERE service_id = ? AND outcome != 1 AND outcome IN \(set) AND sequence <= (
                    SELECT sequence FROM delivery WHERE service_id = ? AND outcome IN \(set) ORDER BY sequence DESC LIMIT 1 OFFSET ?)
                """,
            arguments: [delivery.serviceID, delivery.serviceID, deliveriesKept])
    }

    /// RECEIVED, DEPLOYED, IGNORED: outcomes of deliveries whose signature was verified.
    static let verifiedOutcomes: Set<Int32> = [1, 2, 3]

    /// The newest other delivery of the service that deployed `commit` (a replayed push, or the
    /// same commit pushed again).
    func deployedDelivery(serviceID: String, commit: String, except id: String) throws -> DeliveryRecord? {
        try database.read { db in
            try Row.fetchOne(
                db, sql: "SELECT * FROM delivery WHERE service_id = ? AND commit_sha = ? AND outcome = 2 AND id != ? ORDER BY sequence DESC LIMIT 1",
                arguments: [serviceID, commit, id]
            ).map(DeliveryRecord.init(row:))
        }
    }

    func finish(deliveryID id: String, outcome: Int32, reason: String, deploymentID: String, httpStatus: Int) throws {
        try database.write { db in
            try db.execute(
                sql: "UPDATE delivery SET outcome = ?, reason = ?, deployment_id = ?, http_status = ? WHERE id = ?",
                arguments: [outcome, reason, deploymentID, httpStatus, id])
        }
    }

    func deliveries(serviceID: String, limit: Int) throws -> [DeliveryRecord] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM delivery WHERE service_id = ? ORDER BY sequence DESC LIMIT ?", arguments: [serviceID, limit])
                .map(DeliveryRecord.init(row:))
        }
    }

    /// Deliveries written down (RECEIVED) but not finished, oldest first; those a later delivery of
    /// the same service already deployed past are marked IGNORED instead (an older commit must not
    /// be deployed over a newer one).
    /// Whether some delivery waits to be acted on (a read: the periodic check writes nothing).
    func hasUnfinishedDeliveries() throws -> Bool {
        try database.read { db in try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM delivery WHERE outcome = 1)") ?? false }
    }

    func unfinishedDeliveries() throws -> [DeliveryRecord] {
        try database.write { db in
            try db.execute(sql: """
                UPDATE delivery SET outcome = 3, reason = 'superseded: a later push of this service was deployed first'
                WHERE outcome = 1 AND EXISTS (
                    SELECT 1 FROM delivery later WHERE later.service_id = delivery.service_id AND later.outcome = 2 AND later.sequence > delivery.sequence)
                """)
            return try Row.fetchAll(db, sql: "SELECT * FROM delivery WHERE outcome = 1 ORDER BY sequence").map(DeliveryRecord.init(row:))
        }
    }
}
