import Foundation
import GRDB

/// What one organization may hold at once (docs/limits.md): these defaults for every organization
/// (the operator's `--pipeline-quota NAME=VALUE`), and an organization's own where the operator set
/// one (`SetOrganizationQuotas`, `slipway quota set`; the `organization_quota` table). Checked in
/// the transaction that would exceed it, so concurrent requests cannot pass it together; over it,
/// RESOURCE_EXHAUSTED naming the quota.
public struct OrganizationQuotas: Sendable, Equatable {
    public var projects = 50
    public var environments = 100
    /// Services that are not deleted.
    public var services = 500
    /// Σ replicas × memory over the organization's services, in MiB.
    public var memoryMiB = 256 * 1024
    public var customDomains = 200
    /// Builds of the organization's services at once; more wait their turn in the pipeline (the
    /// builder's slots are shared by every organization).
    public var concurrentBuilds = 2

    public init() {}

    public static let names = ["projects", "environments", "services", "memory-mib", "custom-domains", "concurrent-builds"]

    /// The largest value a quota takes (an operator's "unlimited").
    public static let maxValue = 1 << 40

    /// Applies `NAME=VALUE` (VALUE 1 or more); the reason when it cannot.
    public mutating func set(_ assignment: String) -> String? {
        let parts = assignment.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let value = Int(parts[1]), value > 0, value <= Self.maxValue else {
            return "--pipeline-quota takes NAME=VALUE with VALUE 1 to \(Self.maxValue), got \"\(assignment)\""
        }
        guard Self.names.contains(parts[0]) else {
            return "--pipeline-quota: unknown quota \"\(parts[0])\"; one of \(Self.names.joined(separator: ", "))"
        }
        self[parts[0]] = value
        return nil
    }

    /// The default of quota `name` (one of ``names``).
    public subscript(name: String) -> Int {
        get {
            switch name {
            case "projects": projects
            case "environments": environments
            case "services": services
            case "memory-mib": memoryMiB
            case "custom-domains": customDomains
            case "concurrent-builds": concurrentBuilds
            default: 0
            }
        }
        set {
            switch name {
            case "projects": projects = newValue
            case "environments": environments = newValue
            case "services": services = newValue
            case "memory-mib": memoryMiB = newValue
            case "custom-domains": customDomains = newValue
            case "concurrent-builds": concurrentBuilds = newValue
            default: break
            }
        }
    }

    /// Quota `name` of the organization: its own if the operator set one, else the default.
    func limit(_ name: String, _ organizationID: String, _ db: Database) throws -> Int {
        try Int.fetchOne(
            db.cachedStatement(sql: "SELECT value FROM organization_quota WHERE organization_id = ? AND name = ?"), arguments: [organizationID, name])
            ?? self[name]
    }

    /// What the organization holds against each quota (concurrent-builds is not stored: the
    /// engine's gate knows it).
    static func usage(_ organizationID: String, _ db: Database) throws -> [String: Int] {
        let services = """
            FROM service JOIN environment ON environment.id = service.environment_id JOIN project ON project.id = environment.project_id
            WHERE project.organization_id = ? AND service.deleted_at IS NULL
            """
        func count(_ sql: String) throws -> Int { try Int.fetchOne(db.cachedStatement(sql: sql), arguments: [organizationID]) ?? 0 }
        return [
            "projects": try count("SELECT COUNT(*) FROM project WHERE organization_id = ?"),
            "environments": try count("SELECT COUNT(*) FROM environment JOIN project ON project.id = environment.project_id WHERE project.organization_id = ?"),
            "services": try count("SELECT COUNT(*) \(services)"),
            "memory-mib": try count("SELECT COALESCE(SUM(json_extract(configuration, '$.replicas') * json_extract(configuration, '$.memoryMiB')), 0) \(services)"),
            "custom-domains": try count("SELECT COUNT(*) FROM custom_domain WHERE service_id IN (SELECT service.id \(services))"),
        ]
    }

    // MARK: Checks, inside the store's write transactions

    static func organization(ofEnvironment id: String, _ db: Database) throws -> String? {
        try String.fetchOne(
            db.cachedStatement(sql: "SELECT project.organization_id FROM environment JOIN project ON project.id = environment.project_id WHERE environment.id = ?"),
            arguments: [id])
    }

    static func organization(ofProject id: String, _ db: Database) throws -> String? {
        try String.fetchOne(db.cachedStatement(sql: "SELECT organization_id FROM project WHERE id = ?"), arguments: [id])
    }

    func checkNewProject(organizationID: String, _ db: Database) throws {
        let count = try Int.fetchOne(db.cachedStatement(sql: "SELECT COUNT(*) FROM project WHERE organization_id = ?"), arguments: [organizationID]) ?? 0
        try check(count + 1, try limit("projects", organizationID, db), "projects", organizationID)
    }

    func checkNewEnvironment(projectID: String, _ db: Database) throws {
        guard let organizationID = try Self.organization(ofProject: projectID, db) else { return }
        let count = try Int.fetchOne(
            db.cachedStatement(sql: "SELECT COUNT(*) FROM environment JOIN project ON project.id = environment.project_id WHERE project.organization_id = ?"),
            arguments: [organizationID]) ?? 0
        try check(count + 1, try limit("environments", organizationID, db), "environments", organizationID)
    }

    /// A service created (`serviceID` nil) or changed to `spec`.
    func checkService(_ spec: ServiceSpec, serviceID: String?, environmentID: String, _ db: Database) throws {
        guard let organizationID = try Self.organization(ofEnvironment: environmentID, db) else { return }
        let others = """
            FROM service JOIN environment ON environment.id = service.environment_id JOIN project ON project.id = environment.project_id
            WHERE project.organization_id = ? AND service.deleted_at IS NULL AND service.id != ?
            """
        let arguments: StatementArguments = [organizationID, serviceID ?? ""]
        if serviceID == nil {
            let count = try Int.fetchOne(db.cachedStatement(sql: "SELECT COUNT(*) \(others)"), arguments: arguments) ?? 0
            try check(count + 1, try limit("services", organizationID, db), "services", organizationID)
        }
        let memory = try Int.fetchOne(
            db.cachedStatement(sql: "SELECT COALESCE(SUM(json_extract(configuration, '$.replicas') * json_extract(configuration, '$.memoryMiB')), 0) \(others)"),
            arguments: arguments) ?? 0
        let (product, overflow) = spec.replicas.multipliedReportingOverflow(by: spec.memoryMiB)
        try check(
            overflow ? Int.max : memory.addingReportingOverflow(product).partialValue, try limit("memory-mib", organizationID, db), "memory-mib", organizationID,
            unit: " MiB (replicas × memory)")
        let domains = try Int.fetchOne(
            db.cachedStatement(sql: "SELECT COUNT(*) FROM custom_domain WHERE service_id IN (SELECT service.id \(others))"), arguments: arguments) ?? 0
        try check(domains + Set(spec.customDomains.map { $0.lowercased() }).count, try limit("custom-domains", organizationID, db), "custom-domains", organizationID)
    }

    private func check(_ wanted: Int, _ quota: Int, _ name: String, _ organizationID: String, unit: String = "") throws {
        guard wanted > quota else { return }
        throw PipelineStore.Failure.quota(
            "organization \(organizationID) would hold \(wanted)\(unit) \(name.replacingOccurrences(of: "-mib", with: "")), over its quota of \(quota) (the operator raises it with slipway quota set \(name)=N)")
    }
}

/// At most `limit` builds of one organization at once; the others wait in order, and a waiting
/// build that is cancelled leaves the queue.
actor OrganizationBuildGate {
    /// Every organization's, unless it has its own.
    let defaultLimit: Int
    private var limits: [String: Int]
    private var running: [String: Int] = [:]
    private var waiting: [String: [(id: UInt64, continuation: CheckedContinuation<Void, Never>)]] = [:]
    private var nextID: UInt64 = 0

    init(limit: Int, overrides: [String: Int] = [:]) {
        self.defaultLimit = max(1, limit)
        self.limits = overrides.mapValues { max(1, $0) }
    }

    func limit(_ organizationID: String) -> Int { limits[organizationID] ?? defaultLimit }

    /// The organization's own limit (nil: the default). Raised, waiting builds start at once.
    func setLimit(_ organizationID: String, _ value: Int?) {
        setLimit(organizationID) { value }
    }

    /// The limit `read` answers, read inside the actor (so concurrent changes apply in order).
    func setLimit(_ organizationID: String, _ read: () -> Int?) {
        limits[organizationID] = read().map { max(1, $0) }
        while running[organizationID, default: 0] < limit(organizationID), var queue = waiting[organizationID], !queue.isEmpty {
            let next = queue.removeFirst()
            waiting[organizationID] = queue.isEmpty ? nil : queue
            running[organizationID, default: 0] += 1
            handedOver.insert(next.id)
            next.continuation.resume()
        }
    }

    /// Runs `body` in one of the organization's slots.
    func withSlot<T: Sendable>(_ organizationID: String, _ body: @Sendable () async throws -> T) async throws -> T {
        try await acquire(organizationID)
        defer { release(organizationID) }
        return try await body()
    }

    func acquire(_ organizationID: String) async throws {
        if running[organizationID, default: 0] < limit(organizationID) {
            running[organizationID, default: 0] += 1
            return
        }
        nextID += 1
        let id = nextID
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if Task.isCancelled { return continuation.resume() }
                waiting[organizationID, default: []].append((id, continuation))
            }
        } onCancel: {
            Task { await self.leave(organizationID, id) }
        }
        // Resumed by `release` (the slot is handed over) or by cancellation (no slot); when both
        // happened, the slot goes to the next.
        let holdsSlot = handedOver.remove(id) != nil
        if Task.isCancelled {
            if holdsSlot { release(organizationID) }
            throw CancellationError()
        }
        guard holdsSlot else { throw CancellationError() }
    }

    /// Slots handed to waiters, so that a waiter cancelled at the same moment gives its slot back.
    private var handedOver: Set<UInt64> = []

    func release(_ organizationID: String) {
        // Over its limit (lowered meanwhile), the slot is not handed on.
        if running[organizationID, default: 0] <= limit(organizationID), var queue = waiting[organizationID], !queue.isEmpty {
            let next = queue.removeFirst()
            waiting[organizationID] = queue.isEmpty ? nil : queue
            handedOver.insert(next.id)
            next.continuation.resume()
        } else {
            running[organizationID, default: 1] -= 1
            if running[organizationID] == 0 { running[organizationID] = nil }
        }
    }

    private func leave(_ organizationID: String, _ id: UInt64) {
        guard var queue = waiting[organizationID], let index = queue.firstIndex(where: { $0.id == id }) else { return }
        let entry = queue.remove(at: index)
        waiting[organizationID] = queue.isEmpty ? nil : queue
        entry.continuation.resume()
    }

    /// Builds running and waiting, for tests and logs.
    func load(_ organizationID: String) -> (running: Int, waiting: Int) {
        (running[organizationID, default: 0], waiting[organizationID]?.count ?? 0)
    }
}
