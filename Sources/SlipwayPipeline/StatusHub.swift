import Foundation
import Synchronization

/// One status change, as `Watch` streams it.
public struct PipelineEvent: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case snapshot, snapshotEnd, deploymentStatus, step, runningStatus, deploymentEnded, deploymentQueued
    }

    public var kind: Kind
    public var environmentID: String
    public var deploymentID = ""
    public var serviceID = ""
    public var deploymentStatus: DeploymentStatus?
    public var runningStatus: RunningStatus?
    public var step: PipelineStore.Step?
    public var stepStatus: PipelineStore.StepStatus?
    public var message = ""
    public var time = Date()

    public init(kind: Kind, environmentID: String, deploymentID: String = "", serviceID: String = "") {
        self.kind = kind
        self.environmentID = environmentID
        self.deploymentID = deploymentID
        self.serviceID = serviceID
    }
}

/// Fans status changes out to `Watch` subscribers of an environment (optionally one deployment).
/// Each subscriber has a bounded buffer (``bufferLimit`` events); one that falls that far behind is
/// ended with ``Overflow`` rather than slowing the pipeline or growing without limit — it watches
/// again and gets a fresh snapshot.
public final class StatusHub: Sendable {
    public static let bufferLimit = 10_000

    public struct Overflow: Error, CustomStringConvertible {
        public var description: String {
            "the watcher fell \(StatusHub.bufferLimit) events behind and was disconnected; watch again for a fresh snapshot"
        }
    }

    private struct Subscriber {
        var environmentID: String
        var deploymentID: String?
        var continuation: AsyncThrowingStream<PipelineEvent, any Error>.Continuation
    }

    private let state = Mutex<(next: Int, subscribers: [Int: Subscriber])>((0, [:]))

    public init() {}

    /// Events from now on; the stream ends when ``unsubscribe(_:)`` is called or on overflow.
    public func subscribe(environmentID: String, deploymentID: String?) -> (id: Int, events: AsyncThrowingStream<PipelineEvent, any Error>) {
        let (stream, continuation) = AsyncThrowingStream<PipelineEvent, any Error>.makeStream(bufferingPolicy: .bufferingOldest(Self.bufferLimit))
        let id = state.withLock { state in
            state.next += 1
            state.subscribers[state.next] = Subscriber(environmentID: environmentID, deploymentID: deploymentID, continuation: continuation)
            return state.next
        }
        return (id, stream)
    }

    public func unsubscribe(_ id: Int) {
        let subscriber = state.withLock { $0.subscribers.removeValue(forKey: id) }
        subscriber?.continuation.finish()
    }

    public var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    public func publish(_ event: PipelineEvent) {
        let overflowed = state.withLock { state -> [Subscriber] in
            var overflowed: [Subscriber] = []
            for (id, subscriber) in state.subscribers where subscriber.environmentID == event.environmentID {
                if let deployment = subscriber.deploymentID, deployment != event.deploymentID { continue }
                if case .dropped = subscriber.continuation.yield(event) {
                    overflowed.append(subscriber)
                    state.subscribers[id] = nil
                }
            }
            return overflowed
        }
        for subscriber in overflowed { subscriber.continuation.finish(throwing: Overflow()) }
    }
}
