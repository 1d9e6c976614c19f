import Synchronization

/// The handler tasks of one server. Every call's handler (and each HTTP/1.1 connection's serving)
/// runs in a task registered here, and `RPCServer.run` returns only once all of them have ended:
/// no handler outlives the server that started it. (A task of its own per call, rather than a child of a task group, because a single
/// call must be cancellable on its own when its client resets it or its deadline passes, which a
/// task group's children are not.)
final class HandlerTasks: Sendable {
    private struct State {
        var next = 0
        var running: [Int: Task<Void, Never>] = [:]
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    /// How many handlers run now.
    var count: Int { state.withLock { $0.running.count } }

    /// Starts `body` in a task of its own, registered until it returns.
    func spawn(_ body: @escaping @Sendable () async -> Void) -> Task<Void, Never> {
        // Registered under the lock, so the task's own removal (which takes it) comes after.
        state.withLock { state in
            let id = state.next
            state.next += 1
            let task = Task {
                await body()
                self.finished(id)
            }
            state.running[id] = task
            return task
        }
    }

    private func finished(_ id: Int) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.running[id] = nil
            guard state.running.isEmpty else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Cancels every running handler.
    func cancelAll() {
        for task in state.withLock({ Array($0.running.values) }) { task.cancel() }
    }

    /// Returns once no handler runs.
    func waitForAll() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let idle = state.withLock { state -> Bool in
                guard !state.running.isEmpty else { return true }
                state.waiters.append(continuation)
                return false
            }
            if idle { continuation.resume() }
        }
    }
}
