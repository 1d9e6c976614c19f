import Synchronization

/// The handler tasks of one server. Every call's handler (and each HTTP/1.1 connection's serving)
/// runs in a task counted here, and `RPCServer.run` returns only once all of them have ended: no
/// handler outlives the server that started it. (A task of its own per call, rather than a child
/// of a task group, because a single call must be cancellable on its own when its client resets it
/// or its deadline passes, which a task group's children are not; its connection cancels it.)
/// Costs one atomic add and one subtract per call.
final class HandlerTasks: Sendable {
    private let running = Atomic<Int>(0)
    private let waiters = Mutex<[CheckedContinuation<Void, Never>]>([])

    /// How many handlers run now.
    var count: Int { running.load(ordering: .acquiring) }

    /// Starts `body` in a task of its own, counted until it returns.
    func spawn(_ body: @escaping @Sendable () async -> Void) -> Task<Void, Never> {
        running.add(1, ordering: .relaxed)
        return Task {
            await body()
            self.finished()
        }
    }

    private func finished() {
        guard running.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 else { return }
        for waiter in waiters.withLock({ waiters in defer { waiters = [] }; return waiters }) { waiter.resume() }
    }

    /// Returns once no handler runs.
    func waitForAll() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let idle = waiters.withLock { waiters -> Bool in
                guard running.load(ordering: .acquiring) > 0 else { return true }
                waiters.append(continuation)
                return false
            }
            if idle { continuation.resume() }
        }
    }
}
