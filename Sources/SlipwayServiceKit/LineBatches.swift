import SlipwayProtos
import SlipwayRPC
import Synchronization

/// Log lines waiting for the logs service: bounded, taken in batches by one sender that waits
/// (without a thread) while the queue is empty. Shared by ``DeploymentLogWriter`` (one build's
/// stream) and ``LogShipper`` (one process's stream).
final class LineBatches: Sendable {
    private struct State {
        var pending: [Slipway_Logs_V1_LogLine] = []
        var waiter: CheckedContinuation<Void, Never>?
        var closed = false
        var dropped = 0
    }

    private let state = Mutex(State())
    let capacity: Int
    let batchSize: Int

    init(capacity: Int, batchSize: Int) {
        self.capacity = capacity
        self.batchSize = batchSize
    }

    /// Lines refused (queue full or closed) or given up (``dropPending()``, ``countDropped(_:)``).
    var dropped: Int { state.withLock { $0.dropped } }
    var isClosed: Bool { state.withLock { $0.closed } }

    /// Queues a line; never blocks. A full queue counts it as dropped; a closed one ignores it.
    func push(_ line: Slipway_Logs_V1_LogLine) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard !state.closed else { return nil }
            guard state.pending.count < capacity else {
                state.dropped += 1
                return nil
            }
            state.pending.append(line)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// No more lines: ``next()`` returns what is queued, then nil.
    func close() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.closed = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Puts lines back at the front of the queue (a batch the logs service did not acknowledge),
    /// in their order, before anything queued since; over the capacity if it must (they were
    /// admitted once).
    func requeue(_ lines: [Slipway_Logs_V1_LogLine]) {
        guard !lines.isEmpty else { return }
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.pending.insert(contentsOf: lines, at: 0)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    func countDropped(_ count: Int) {
        state.withLock { $0.dropped += count }
    }

    /// Gives up on everything queued (counted as dropped) and closes.
    func dropPending() {
        state.withLock { state in
            state.dropped += state.pending.count
            state.pending = []
            state.closed = true
        }
    }

    /// The next batch (up to ``batchSize`` lines), waiting for one; nil once closed and empty.
    func next() async -> [Slipway_Logs_V1_LogLine]? {
        while true {
            enum Next { case batch([Slipway_Logs_V1_LogLine]), done, wait }
            let next = state.withLock { state -> Next in
                if !state.pending.isEmpty {
                    let count = min(state.pending.count, batchSize)
                    let batch = Array(state.pending.prefix(count))
                    state.pending.removeFirst(count)
                    return .batch(batch)
                }
                return state.closed ? .done : .wait
            }
            switch next {
            case .batch(let batch): return batch
            case .done: return nil
            case .wait:
                await withCheckedContinuation { continuation in
                    let resumeNow = state.withLock { state -> Bool in
                        if !state.pending.isEmpty || state.closed { return true }
                        state.waiter = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            }
        }
    }

    /// One Append stream: sends batches until the queue is closed and empty. A batch is held until
    /// the logs service acknowledges it (it is then on disk); if the stream breaks, the batches not
    /// acknowledged go back to the front of the queue for the next stream (a line arrives twice only
    /// if the service stopped between writing it and acknowledging it), except those the service
    /// refused as invalid, which are dropped (counted). Throws what broke the stream.
    func send(through client: RPCClient) async throws {
        let unacknowledged = Mutex<[(id: UInt64, lines: [Slipway_Logs_V1_LogLine])]>([])
        do {
            try await client.bidirectional(Slipway_Logs_V1_Logs.Append.self, requests: { writer in
                var batchID: UInt64 = 0
                while let batch = await self.next() {
                    batchID += 1
                    var request = Slipway_Logs_V1_AppendRequest()
                    request.batchId = batchID
                    request.lines = batch
                    unacknowledged.withLock { $0.append((batchID, batch)) }
                    try await writer.write(request)
                }
            }, responses: { responses in
                for try await response in responses {
                    unacknowledged.withLock { held in held.removeAll { $0.id <= response.batchId } }
                }
            })
        } catch {
            let held = unacknowledged.withLock { held in
                defer { held = [] }
                return held.flatMap(\.lines)
            }
            if let refusal = error as? RPCError, refusal.code == .invalidArgument {
                countDropped(held.count)
            } else {
                requeue(held)
            }
            throw error
        }
    }
}
