/// The order of a deploy's steps, apart from carrying them out: how many new instances start and how
/// many old ones stop, batch by batch, within the strategy's bounds. Pure, so every strategy is
/// tested without runc; ``LocalCluster`` asks it for the next step and does it.
///
/// Rolling update (Kubernetes' rules, absolute numbers): never more than replicas + max surge
/// instances at once, and an old instance stops only when the new ones leave at least replicas - max
/// unavailable serving (or more than replicas serve). Recreate: every old one stops, then the new ones
/// start, then traffic goes to them.
struct RolloutPlan: Sendable {
    enum Step: Equatable, Sendable {
        /// Move traffic to the instances that stay, then stop this many old ones (0: traffic only).
        case stopOld(Int)
        /// Start this many new instances and wait until every one is ready.
        case startNew(Int)
        /// Point traffic at the instances serving now.
        case route
        /// Every new instance is ready and every old one stopped.
        case done
    }

    let replicas: Int
    let strategy: RolloutStrategy
    /// Old instances still running.
    private(set) var old: Int
    /// New instances started and ready.
    private(set) var ready = 0
    private var justStarted = false
    private var recreatePhase = 0

    /// `strategy` nil: every new instance at once, then the old ones go (rolling with max surge =
    /// replicas, max unavailable = 0).
    init(replicas: Int, strategy: RolloutStrategy?, old: Int) {
        self.replicas = replicas
        self.strategy = strategy ?? .rolling(maxSurge: replicas, maxUnavailable: 0)
        self.old = old
    }

    /// The next step, taken as done (a step that fails ends the deploy).
    mutating func next() -> Step {
        switch strategy {
        case .recreate:
            recreatePhase += 1
            switch recreatePhase {
            case 1:
                defer { old = 0 }
                return .stopOld(old)
            case 2:
                ready = replicas
                return .startNew(replicas)
            case 3:
                return .route
            default:
                return .done
            }
        case .rolling(let surge, let unavailable):
            if justStarted {
                // Traffic to the new ones, away from the old ones beyond the count, in one change.
                justStarted = false
                let excess = min(max(0, old + ready - replicas), old)
                old -= excess
                return .stopOld(excess)
            }
            guard ready < replicas else { return .done }
            let room = replicas + surge - (old + ready)
            if room <= 0 {
                // No room for a new one: old ones go first, as many as may be unavailable.
                let count = min(old, max(1, unavailable))
                old -= count
                return .stopOld(count)
            }
            let count = min(room, replicas - ready)
            ready += count
            justStarted = true
            return .startNew(count)
        }
    }
}
