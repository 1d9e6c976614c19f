import NIOCore
import Synchronization

/// Received messages waiting for a reader (any task), filled by the event loop.
///
/// The event loop stops returning flow-control window to the peer while more than `windowHoldback`
/// bytes wait here; a reader that takes messages asks it to return the window again. So a slow
/// reader slows the sender, and nothing buffers without bound.
final class InboundMessages: Sendable {
    struct State {
        var queue = CircularBuffer<ByteBuffer>()
        var queuedBytes = 0
        var end: RPCError??  // nil: open; .some(nil): ended cleanly; .some(error): failed
        var waiter: CheckedContinuation<ByteBuffer?, any Error>?
        var waiterID = 0
        /// The event loop holds back window until the reader catches up.
        var windowHeld = false
    }

    private let state = Mutex(State())
    let windowHoldback: Int
    /// Asks the event loop to release held-back window.
    private let releaseWindow: @Sendable () -> Void

    init(windowHoldback: Int, releaseWindow: @escaping @Sendable () -> Void) {
        self.windowHoldback = windowHoldback
        self.releaseWindow = releaseWindow
    }

    // MARK: Event-loop side

    /// Adds a message; returns false when the reader is behind and window should be held back.
    func push(_ message: ByteBuffer) -> Bool {
        let (waiter, keepWindow) = state.withLock { state -> (CheckedContinuation<ByteBuffer?, any Error>?, Bool) in
            if let waiter = state.waiter {
                state.waiter = nil
                return (waiter, true)
            }
            state.queue.append(message)
            state.queuedBytes += message.readableBytes
            if state.queuedBytes > windowHoldback {
                state.windowHeld = true
                return (nil, false)
            }
            return (nil, true)
        }
        waiter?.resume(returning: message)
        return keepWindow
    }

    /// Whether the event loop is holding back window for this reader.
    var isHoldingWindow: Bool { state.withLock { $0.windowHeld } }

    /// The window was released by the event loop.
    func windowReleased() { state.withLock { $0.windowHeld = false } }

    /// No more messages: `error` nil for a clean end.
    func finish(_ error: RPCError?) {
        let waiter = state.withLock { state -> CheckedContinuation<ByteBuffer?, any Error>? in
            guard state.end == nil else { return nil }
            state.end = .some(error)
            let waiter = state.waiter
            state.waiter = nil
            return waiter
        }
        if let waiter {
            if let error { waiter.resume(throwing: error) } else { waiter.resume(returning: nil) }
        }
    }

    // MARK: Reader side

    /// The next message, nil at the end; throws the error the stream ended with.
    func next() async throws -> ByteBuffer? {
        if let ready = try takeReady() { return ready.message }
        let id = state.withLock { state -> Int in
            state.waiterID += 1
            return state.waiterID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ByteBuffer?, any Error>) in
                let immediate = state.withLock { state -> Result<ByteBuffer?, any Error>? in
                    if let message = state.queue.popFirst() {
                        state.queuedBytes -= message.readableBytes
                        return .success(message)
                    }
                    if let end = state.end { return end.map { .failure($0) } ?? .success(nil) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiter = continuation
                    return nil
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<ByteBuffer?, any Error>? in
                guard state.waiterID == id else { return nil }
                let waiter = state.waiter
                state.waiter = nil
                return waiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// A queued message or the end, without waiting; nil when the reader must wait.
    private func takeReady() throws -> (message: ByteBuffer?, Void)? {
        let (result, release) = state.withLock { state -> (Result<ByteBuffer?, RPCError>?, Bool) in
            if let message = state.queue.popFirst() {
                state.queuedBytes -= message.readableBytes
                let release = state.windowHeld && state.queuedBytes <= windowHoldback / 2
                if release { state.windowHeld = false }
                return (.success(message), release)
            }
            if let end = state.end { return (end.map { .failure($0) } ?? .success(nil), false) }
            return (nil, false)
        }
        if release { releaseWindow() }
        switch result {
        case .success(let message): return (message, ())
        case .failure(let error): throw error
        case nil: return nil
        }
    }
}
