import Synchronization

/// Callers that change the same thing take turns, in the order they came; callers for different
/// keys do not wait for each other. Actors are reentrant: an actor method that awaits in the middle of
/// a read-modify-write needs this to keep the change whole.
///
///     await turns.acquire(id)
///     defer { turns.release(id) }
public final class Turns: Sendable {
    private struct State {
        var busy: Set<String> = []
        var waiting: [String: [CheckedContinuation<Void, Never>]] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    /// Returns when it is the caller's turn for `key`; the caller must ``release(_:)`` it.
    public func acquire(_ key: String = "") async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                if state.busy.insert(key).inserted { return true }
                state.waiting[key, default: []].append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Hands `key` to the next caller waiting for it, if any.
    public func release(_ key: String = "") {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard var queue = state.waiting[key], !queue.isEmpty else {
                state.busy.remove(key)
                return nil
            }
            let next = queue.removeFirst()
            state.waiting[key] = queue.isEmpty ? nil : queue
            return next
        }
        next?.resume()
    }
}
