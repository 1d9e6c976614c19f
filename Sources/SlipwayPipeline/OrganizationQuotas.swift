import Foundation
import GRDB

/// What one organization may hold at once (docs/limits.md), the same for every organization unless
/// the operator changes it (`--pipeline-quota NAME=VALUE`). Checked in the transaction that would
/// exceed it, so concurrent requests cannot pass it together; over it, RESOURCE_EXHAUSTED naming
/// the quota.
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

    /// Applies `NAME=VALUE` (VALUE 1 or more); the reason when it cannot.
    public mutating func set(_ assignment: String) -> String? {
        let parts = assignment.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let value = Int(parts[1]), value > 0 else {
            return "--pipeline-quota takes NAME=VALUE with VALUE 1 or more, got \"\(assignment)\""
        }
        switch parts[0] {
        case "projects": projects = value
        case "environments": environments = value
        case "services": services = value
        case "memory-mib": memoryMiB = value
        case "custom-domains": customDomains = value
        case "concurrent-builds": concurrentBuilds = value
        default: return "--pipeline-quota: unknown quota \"\(parts[0])\"; one of \(Self.names.joined(separator: ", "))"
        }
        return nil
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
        try check(count + 1, projects, "projects", organizationID)
    }

    func checkNewEnvironment(projectID: String, _ db: Database) throws {
        guard let organizationID = try Self.organization(ofProject: projectID, db) else { return }
        let count = try Int.fetchOne(
            db.cachedStatement(sql: "SELECT COUNT(*) FROM environment JOIN project ON project.id = environment.project_id WHERE project.organization_id = ?"),
            arguments: [organizationID]) ?? 0
        try check(count + 1, environments, "environments", organizationID)
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
            try check(count + 1, services, "services", organizationID)
        }
        let memory = try Int.fetchOne(
            db.cachedStatement(sql: "SELECT COALESCE(SUM(json_extract(configuration, '$.replicas') * json_extract(configuration, '$.memoryMiB')), 0) \(others)"),
            arguments: arguments) ?? 0
        let (product, overflow) = spec.replicas.multipliedReportingOverflow(by: spec.memoryMiB)
        try check(overflow ? Int.max : memory.addingReportingOverflow(product).partialValue, memoryMiB, "memory-mib", organizationID, unit: " MiB (replicas × memory)")
        let domains = try Int.fetchOne(
            db.cachedStatement(sql: "SELECT COUNT(*) FROM custom_domain WHERE service_id IN (SELECT service.id \(others))"), arguments: arguments) ?? 0
        try check(domains + Set(spec.customDomains.map { $0.lowercased() }).count, customDomains, "custom-domains", organizationID)
    }

    private func check(_ wanted: Int, _ quota: Int, _ name: String, _ organizationID: String, unit: String = "") throws {
        guard wanted > quota else { return }
        throw PipelineStore.Failure.quota(
            "organization \(organizationID) would hold \(wanted)\(unit) \(name.replacingOccurrences(of: "-mib", with: "")), over its quota of \(quota) (the operator's --pipeline-quota \(name)=N)")
    }
}

/// At most `limit` builds of one organization at once; the others wait in order, and a waiting
/// build that is cancelled leaves the queue.
actor OrganizationBuildGate {
    let limit: Int
    private var running: [String: Int] = [:]
    private var waiting: [String: [(id: UInt64, continuation: CheckedContinuation<Void, Never>)]] = [:]
    private var nextID: UInt64 = 0

    init(limit: Int) {
        self.limit = max(1, limit)
    }

    /// Runs `body` in one of the organization's slots.
    func withSlot<T: Sendable>(_ organizationID: String, _ body: @Sendable () async throws -> T) async throws -> T {
        try await acquire(organizationID)
        defer { release(organizationID) }
        return try await body()
    }

    func acquire(_ organizationID: String) async throws {
        if running[organizationID, default: 0] < limit {
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
        if var queue = waiting[organizationID], !queue.isEmpty {
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
