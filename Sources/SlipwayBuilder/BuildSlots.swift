import SlipwayRPC

/// At most `capacity` builds run at once; the next ones wait in order, up to `maxQueued` of them
/// (beyond that a build is refused with RESOURCE_EXHAUSTED rather than queued without bound).
actor BuildSlots {
    let capacity: Int
    let maxQueued: Int
    private var running = 0
    private var nextTicket: UInt64 = 0
    private var queue: [(ticket: UInt64, continuation: CheckedContinuation<Void, any Error>)] = []

    init(capacity: Int, maxQueued: Int) {
        self.capacity = capacity
        self.maxQueued = maxQueued
    }

    var runningCount: Int { running }
    var queuedCount: Int { queue.count }

    /// Waits for a slot. `onQueued` is told the place in line (1: next) when this one has to wait.
    /// Cancellation while waiting leaves the queue and throws `CancellationError`.
    func acquire(onQueued: @Sendable (Int) async -> Void) async throws {
        if running < capacity && queue.isEmpty {
            running += 1
            return
        }
        guard queue.count < maxQueued else {
            throw RPCError(.resourceExhausted, "\(queue.count) builds are already waiting for one of \(capacity) build slots (--builder-max-queued); retry later")
        }
        nextTicket += 1
        let ticket = nextTicket
        await onQueued(queue.count + 1)
        // The actor may have run other work while `onQueued` was awaited: a slot may be free now.
        if running < capacity && queue.isEmpty {
            running += 1
            return
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                if Task.isCancelled {
                    continuation.resume(throwing: CancellationError())
                } else {
                    queue.append((ticket, continuation))
                }
            }
        } onCancel: {
            Task { await self.leave(ticket) }
        }
    }

    func release() {
        if queue.isEmpty {
            running -= 1
        } else {
            // The slot passes straight to the next build in line.
            queue.removeFirst().continuation.resume()
        }
    }

    private func leave(_ ticket: UInt64) {
        guard let index = queue.firstIndex(where: { $0.ticket == ticket }) else { return }
        queue.remove(at: index).continuation.resume(throwing: CancellationError())
    }
}
