/// One environment's deployments waiting and running: one action at a time, later ones queue in
/// order; a queued DEPLOY of a service is superseded by a newer DEPLOY of the same service (the
/// older one keeps its other services, or is superseded whole — recorded, never silently dropped);
/// a request carrying an idempotency key already seen is the same deployment, not a new one.
///
/// A plain value: the store persists it with the deployments (state written before it is acted
/// on), and a restarted pipeline rebuilds it from there.
public struct EnvironmentQueue: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var deploymentID: String
        public var action: ServiceAction
        /// The services this deployment still acts on (superseded ones are removed).
        public var services: [String]
        public var idempotencyKey: String?

        public init(deploymentID: String, action: ServiceAction, services: [String], idempotencyKey: String? = nil) {
            self.deploymentID = deploymentID
            self.action = action
            self.services = services
            self.idempotencyKey = idempotencyKey
        }
    }

    /// What ``enqueue(_:)`` did.
    public struct Enqueued: Sendable, Equatable {
        public enum Placement: Sendable, Equatable {
            /// Nothing was running: this deployment runs now.
            case started
            /// Waiting; 1 is next.
            case queued(position: Int)
            /// The idempotency key was seen: this is that deployment, nothing new was queued.
            case duplicate(of: String)
        }

        public var placement: Placement
        /// Queued deployments whose services this one took over: deployment id → those services.
        public var superseded: [String: [String]] = [:]
        /// Deployments left with no service at all: superseded whole, out of the queue.
        public var removed: [String] = []
    }

    public private(set) var running: Entry?
    public private(set) var waiting: [Entry] = []
    /// Idempotency keys of recent deployments, oldest first (bounded by ``maxRememberedKeys``).
    private var keys: [(key: String, deploymentID: String)] = []
    public let maxRememberedKeys: Int

    public init(maxRememberedKeys: Int = 1000) {
        self.maxRememberedKeys = maxRememberedKeys
    }

    public mutating func enqueue(_ entry: Entry) -> Enqueued {
        if let key = entry.idempotencyKey, let seen = keys.first(where: { $0.key == key }) {
            return Enqueued(placement: .duplicate(of: seen.deploymentID))
        }
        if let key = entry.idempotencyKey {
            keys.append((key, entry.deploymentID))
            if keys.count > maxRememberedKeys { keys.removeFirst(keys.count - maxRememberedKeys) }
        }
        var result = Enqueued(placement: .started)
        if entry.action == .deploy {
            // Waiting deploys lose the services this newer deploy covers; the running one is not touched.
            for index in waiting.indices where waiting[index].action == .deploy {
                let taken = waiting[index].services.filter(entry.services.contains)
                guard !taken.isEmpty else { continue }
                result.superseded[waiting[index].deploymentID] = taken
                waiting[index].services.removeAll(where: entry.services.contains)
            }
            result.removed = waiting.filter { $0.action == .deploy && $0.services.isEmpty }.map(\.deploymentID)
            waiting.removeAll { $0.action == .deploy && $0.services.isEmpty }
        }
        if running == nil {
            running = entry
        } else {
            waiting.append(entry)
            result.placement = .queued(position: waiting.count)
        }
        return result
    }

    /// The running deployment ended; returns the next one, now running (nil when nothing waits, or
    /// when `deploymentID` is not the running one: then nothing changes).
    public mutating func finish(_ deploymentID: String) -> Entry? {
        guard running?.deploymentID == deploymentID else { return nil }
        running = waiting.isEmpty ? nil : waiting.removeFirst()
        return running
    }

    /// Takes a waiting deployment out (canceled before it ran). False when it is not waiting.
    public mutating func remove(_ deploymentID: String) -> Bool {
        guard let index = waiting.firstIndex(where: { $0.deploymentID == deploymentID }) else { return false }
        waiting.remove(at: index)
        return true
    }

    /// Where a waiting deployment stands (1 is next), nil when it is not waiting.
    public func position(of deploymentID: String) -> Int? {
        waiting.firstIndex { $0.deploymentID == deploymentID }.map { $0 + 1 }
    }

    public static func == (lhs: EnvironmentQueue, rhs: EnvironmentQueue) -> Bool {
        lhs.running == rhs.running && lhs.waiting == rhs.waiting && lhs.keys.map(\.key) == rhs.keys.map(\.key)
    }
}
