import Testing

@testable import SlipwayPipeline

@Suite struct DeploymentStatusTests {
    typealias Status = DeploymentStatus

    /// Every event the machine knows, for exhaustive checks.
    static let events: [Status.Event] = ServiceAction.allCases.map { .queue($0) } + [.startBuild, .start, .succeed, .fail, .cancel, .canceled, .skip]

    /// Runs `events` from a service never deployed; returns each status reached.
    func path(_ events: [Status.Event]) throws -> [Status] {
        var statuses = [try Status.initial(events[0])]
        for event in events.dropFirst() { statuses.append(try statuses.last!.applying(event)) }
        return statuses
    }

    @Test func anApplicationDeployBuildsThenRollsOut() throws {
        #expect(try path([.queue(.deploy), .startBuild, .start, .succeed]) == [.queued, .building, .deploying, .deployed])
    }

    @Test func aContainerDeployGoesStraightToDeploying() throws {
        #expect(try path([.queue(.deploy), .start, .succeed]) == [.queued, .deploying, .deployed])
    }

    @Test func failuresAreNamedByWhereTheyHappened() throws {
        #expect(try path([.queue(.deploy), .startBuild, .fail]).last == .buildError)
        #expect(try path([.queue(.deploy), .startBuild, .start, .fail]).last == .deploymentError)
        #expect(try path([.queue(.restart), .start, .fail]).last == .restartError)
        #expect(try path([.queue(.stop), .start, .fail]).last == .stopError)
        #expect(try path([.queue(.delete), .start, .fail]).last == .deleteError)
    }

    @Test func otherActionsFollowQueuedIngEd() throws {
        #expect(try path([.queue(.restart), .start, .succeed]) == [.restartQueued, .restarting, .restarted])
        #expect(try path([.queue(.stop), .start, .succeed]) == [.stopQueued, .stopping, .stopped])
        #expect(try path([.queue(.delete), .start, .succeed]) == [.deleteQueued, .deleting, .deleted])
    }

    @Test func cancelEndsQueuedAtOnceAndStopsRunningWork() throws {
        #expect(try path([.queue(.deploy), .cancel]).last == .canceled)
        #expect(try path([.queue(.stop), .cancel]).last == .canceled)
        #expect(try path([.queue(.deploy), .startBuild, .cancel, .canceled]) == [.queued, .building, .canceling, .canceled])
        #expect(try path([.queue(.deploy), .start, .cancel, .canceled]).last == .canceled)
        // The work ended before the cancel reached it.
        #expect(try path([.queue(.deploy), .start, .cancel, .succeed]).last == .deployed)
        #expect(try path([.queue(.deploy), .startBuild, .cancel, .fail]).last == .deploymentError)
    }

    @Test func restartStopAndDeleteInProgressCannotBeCanceled() {
        for status in [Status.restarting, .stopping, .deleting] {
            #expect(throws: Status.InvalidTransition.self) { try status.applying(.cancel) }
        }
    }

    @Test func aSupersededQueuedDeployIsSkipped() throws {
        #expect(try path([.queue(.deploy), .skip]).last == .skipped)
        // Once running it can no longer be skipped.
        #expect(throws: Status.InvalidTransition.self) { try Status.building.applying(.skip) }
    }

    @Test func aNewDeploymentQueuesOnlyAfterThePreviousOneIsOver() throws {
        for status in Status.allCases {
            let result = try? status.applying(.queue(.deploy))
            if status.isFinal && status != .deleted {
                #expect(result == .queued, "\(status)")
            } else {
                #expect(result == nil, "\(status) must not accept a new deployment")
            }
        }
    }

    @Test func aDeletedServiceTakesNothingMore() {
        for event in Self.events {
            #expect(throws: Status.InvalidTransition.self) { try Status.deleted.applying(event) }
        }
    }

    @Test func aServiceNeverDeployedCanOnlyBeQueued() throws {
        for event in Self.events {
            if case .queue(let action) = event {
                #expect(try Status.initial(event) == Status.queued(action))
            } else {
                #expect(throws: Status.InvalidTransition.self) { try Status.initial(event) }
            }
        }
    }

    @Test func everyStatusIsReachableAndEveryTransitionStaysInTheActionsSet() throws {
        var reached: Set<Status> = []
        var frontier: [Status] = ServiceAction.allCases.map(Status.queued)
        while let status = frontier.popLast() {
            guard reached.insert(status).inserted else { continue }
            for event in Self.events {
                guard let next = try? status.applying(event) else { continue }
                // Only a new queue, a cancel or a skip leave an action's own statuses.
                if case .queue = event {} else if next != .canceled && next != .skipped {
                    #expect(next.action == status.action, "\(status) --\(event)--> \(next)")
                }
                frontier.append(next)
            }
        }
        #expect(reached == Set(Status.allCases))
    }

    @Test func everyStatusIsQueuedRunningOrFinalExactlyOnce() {
        for status in Status.allCases {
            #expect([status.isQueued, status.isRunning, status.isFinal].filter { $0 }.count == 1, "\(status)")
        }
        #expect(Status.allCases.map(\.rawValue).contains("DELETE_ERROR"))
    }
}

@Suite struct StatusRollupTests {
    @Test func workInProgressWinsThenErrorsThenSuccess() {
        #expect(StatusRollup.deployment([.deployed, .building, .queued]) == .building)
        #expect(StatusRollup.deployment([.deployed, .deploying, .building]) == .deploying)
        #expect(StatusRollup.deployment([.deployed, .buildError]) == .buildError)
        #expect(StatusRollup.deployment([.deployed, .deployed]) == .deployed)
        #expect(StatusRollup.deployment([.deployed, .canceled]) == .canceled)
        #expect(StatusRollup.deployment([.stopped, .stopError]) == .stopError)
    }

    @Test func skippedServicesCountOnlyWhenAllWereSkipped() {
        #expect(StatusRollup.deployment([.deployed, .skipped]) == .deployed)
        #expect(StatusRollup.deployment([.skipped, .skipped]) == .skipped)
        #expect(StatusRollup.deployment([]) == nil)
    }

    @Test func runningStatusRollsUp() {
        #expect(StatusRollup.running([.running, .running]) == .running)
        #expect(StatusRollup.running([.running, .error]) == .warning)
        #expect(StatusRollup.running([.running, .warning]) == .warning)
        #expect(StatusRollup.running([.error, .stopped]) == .error)
        #expect(StatusRollup.running([.running, .starting]) == .starting)
        #expect(StatusRollup.running([.running, .stopped]) == .running)
        #expect(StatusRollup.running([.stopped, .stopped]) == .stopped)
        #expect(StatusRollup.running([]) == nil)
    }
}
