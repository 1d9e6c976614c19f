import Testing

@testable import SlipwayCluster

/// The rollout order without runc: every strategy's bounds, checked over many shapes.
@Suite struct RolloutPlanTests {
    /// Runs a plan to its end, tracking what runs and what serves, and checks the bounds at each step.
    func simulate(replicas: Int, strategy: RolloutStrategy?, old: Int) -> [RolloutPlan.Step] {
        var plan = RolloutPlan(replicas: replicas, strategy: strategy, old: old)
        var steps: [RolloutPlan.Step] = []
        var running = old  // old still running + new ones started
        var oldLeft = old
        var newReady = 0
        let (surge, unavailable) = switch strategy ?? .rolling(maxSurge: replicas, maxUnavailable: 0) {
        case .rolling(let surge, let unavailable): (surge, unavailable)
        case .recreate: (Int.max / 2, Int.max / 2)
        }
        while true {
            let step = plan.next()
            steps.append(step)
            switch step {
            case .startNew(let count):
                #expect(count > 0)
                running += count
                #expect(running <= replicas + surge, "more than replicas + surge at once: \(steps)")
                newReady += count
            case .stopOld(let count):
                #expect(count >= 0 && count <= oldLeft)
                let before = oldLeft + newReady
                oldLeft -= count
                running -= count
                // Never below what may be unavailable, unless it already was.
                #expect(oldLeft + newReady >= min(before, replicas - unavailable), "too few serving: \(steps)")
            case .route:
                break
            case .done:
                #expect(newReady == replicas, "ended with \(newReady) of \(replicas) ready: \(steps)")
                #expect(oldLeft == 0, "ended with \(oldLeft) old instances left: \(steps)")
                return steps
            }
            #expect(steps.count < 200, "no end in sight: \(steps)")
            if steps.count >= 200 { return steps }
        }
    }

    @Test func rollingUpdatesKeepEveryBoundAndEndWithOnlyNewInstances() {
        for replicas in 1...6 {
            for old in 0...7 {
                for surge in 0...4 {
                    for unavailable in 0...4 where surge + unavailable > 0 {
                        _ = simulate(replicas: replicas, strategy: .rolling(maxSurge: surge, maxUnavailable: unavailable), old: old)
                    }
                }
            }
        }
    }

    @Test func theDefaultStartsEveryNewInstanceThenStopsTheOldOnes() {
        #expect(simulate(replicas: 3, strategy: nil, old: 3) == [.startNew(3), .stopOld(3), .done])
        #expect(simulate(replicas: 2, strategy: nil, old: 0) == [.startNew(2), .stopOld(0), .done])
    }

    @Test func surgeOneUnavailableZeroReplacesOneAtATime() {
        #expect(simulate(replicas: 3, strategy: .rolling(maxSurge: 1, maxUnavailable: 0), old: 3)
            == [.startNew(1), .stopOld(1), .startNew(1), .stopOld(1), .startNew(1), .stopOld(1), .done])
    }

    @Test func surgeZeroStopsBeforeItStarts() {
        #expect(simulate(replicas: 2, strategy: .rolling(maxSurge: 0, maxUnavailable: 1), old: 2)
            == [.stopOld(1), .startNew(1), .stopOld(0), .stopOld(1), .startNew(1), .stopOld(0), .done])
    }

    @Test func recreateStopsEverythingFirstThenStartsThenRoutes() {
        #expect(simulate(replicas: 2, strategy: .recreate, old: 3) == [.stopOld(3), .startNew(2), .route, .done])
        #expect(simulate(replicas: 1, strategy: .recreate, old: 0) == [.stopOld(0), .startNew(1), .route, .done])
    }
}
