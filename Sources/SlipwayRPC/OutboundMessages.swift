import NIOCore
import Synchronization

/// How a stream's sending side ends.
enum OutboundEnd: Sendable {
    /// Client: END_STREAM after the last message.
    case endStream
    /// Server: trailers with this status and metadata.
    case status(code: RPCStatusCode, message: String, metadata: Metadata)
}

/// Encoded messages queued by a writer (any thread) for the event loop to frame into DATA.
///
/// Writers append under a lock and wake the event loop at most once per batch; a writer that gets
/// `highWatermark` bytes ahead of the network waits until nghttp2 has taken half of them.
final class OutboundMessages: Sendable {
    struct State {
        var pending: ByteBuffer
        var end: OutboundEnd?
        var initialMetadata = Metadata()
        /// A plain HTTP response's status and headers (instead of gRPC's).
        var plainHead: (status: Int, headers: [(String, String)])?
        /// A plain HTTP response broke off after its head: the stream is reset, not ended.
        var aborted = false
        /// Set when the stream can no longer send: writes fail with it.
        var failure: RPCError?
        /// Writers waiting for room, by id (usually one; a plain HTTP stream can have several).
        var waiters: [Int: CheckedContinuation<Void, any Error>] = [:]
        var waiterID = 0
        /// An event-loop wake-up is already scheduled.
        var notified = false
    }

    private let state: Mutex<State>
    private let highWatermark: Int
    private let maxMessageSize: Int
    /// Wakes the event loop to pull from this queue.
    private let notify: @Sendable () -> Void

    init(allocator: ByteBufferAllocator, highWatermark: Int, maxMessageSize: Int, notify: @escaping @Sendable () -> Void) {
        self.state = Mutex(State(pending: allocator.buffer(capacity: 0)))
        self.highWatermark = highWatermark
        self.maxMessageSize = maxMessageSize
        self.notify = notify
    }

    /// Queues one encoded message; waits while too much is queued.
    func write(_ bytes: [UInt8]) async throws {
        guard bytes.count <= maxMessageSize else {
            throw RPCError(.resourceExhausted, "message of \(bytes.count) bytes exceeds the limit of \(maxMessageSize) bytes")
        }
        try await enqueue { $0.writeGRPCMessage(bytes) }
    }

    /// Queues bytes of a plain HTTP body as they are (no gRPC framing); waits while too much is queued.
    func writeRaw(_ bytes: [UInt8]) async throws {
        try await enqueue { $0.writeBytes(bytes) }
    }

    private func enqueue(_ append: (inout ByteBuffer) -> Void) async throws {
        let (mustNotify, mustWait) = try state.withLock { state throws(RPCError) -> (Bool, Bool) in
            if let failure = state.failure { throw failure }
            if state.end != nil { throw RPCError(.internal, "write after the stream was finished") }
            append(&state.pending)
            let mustNotify = !state.notified
            state.notified = true
            return (mustNotify, state.pending.readableBytes > highWatermark)
        }
        if mustNotify { notify() }
        if mustWait { try await waitForRoom() }
    }

    /// Queues a message without waiting (event-loop handlers); the caller bounds what it writes.
    func writeNow(_ bytes: [UInt8]) throws(RPCError) {
        guard bytes.count <= maxMessageSize else {
            throw RPCError(.resourceExhausted, "message of \(bytes.count) bytes exceeds the limit of \(maxMessageSize) bytes")
        }
        let mustNotify = try state.withLock { state throws(RPCError) -> Bool in
            if let failure = state.failure { throw failure }
            state.pending.writeGRPCMessage(bytes)
            let mustNotify = !state.notified
            state.notified = true
            return mustNotify
        }
        if mustNotify { notify() }
    }

    /// Ends the sending side after what is queued. Idempotent: the first end wins.
    func finish(_ end: OutboundEnd) {
        let mustNotify = state.withLock { state -> Bool in
            guard state.end == nil, state.failure == nil else { return false }
            state.end = end
            let mustNotify = !state.notified
            state.notified = true
            return mustNotify
        }
        if mustNotify { notify() }
    }

    /// Sets a plain HTTP response's status and headers, before the first body bytes.
    func setPlainHead(status: Int, headers: [(String, String)]) {
        state.withLock { if $0.plainHead == nil { $0.plainHead = (status, headers) } }
    }

    /// Replaces a plain HTTP head that was not sent (an error before any body).
    func replacePlainHead(status: Int, headers: [(String, String)]) {
        state.withLock { $0.plainHead = (status, headers) }
    }

    /// Breaks off a plain HTTP response: the stream is reset so the client sees it incomplete.
    func abort() {
        let mustNotify = state.withLock { state -> Bool in
            guard state.end == nil, state.failure == nil else { return false }
            state.aborted = true
            state.end = .endStream
            let mustNotify = !state.notified
            state.notified = true
            return mustNotify
        }
        if mustNotify { notify() }
    }

    var isAborted: Bool { state.withLock { $0.aborted } }

    /// The plain HTTP head set so far.
    var plainHead: (status: Int, headers: [(String, String)])? { state.withLock { $0.plainHead } }

    /// Sets metadata for the response headers (server) before the first message.
    func setInitialMetadata(_ metadata: Metadata) {
        state.withLock { $0.initialMetadata = metadata }
    }

    /// The stream is gone: fail the waiting writers and every later write.
    func fail(_ error: RPCError) {
        let waiters = state.withLock { state -> [Int: CheckedContinuation<Void, any Error>] in
            if state.failure == nil { state.failure = error }
            defer { state.waiters = [:] }
            return state.waiters
        }
        for waiter in waiters.values { waiter.resume(throwing: error) }
    }

    private func waitForRoom() async throws {
        let id = state.withLock { state -> Int in
            state.waiterID += 1
            return state.waiterID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let result = state.withLock { state -> Result<Void, any Error>? in
                    if let failure = state.failure { return .failure(failure) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if state.pending.readableBytes <= highWatermark / 2 { return .success(()) }
                    state.waiters[id] = continuation
                    return nil
                }
                if let result { continuation.resume(with: result) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume(throwing: CancellationError())
        }
    }

    // MARK: Event-loop side

    /// Called by the event loop when it handles a wake-up: later writes wake it again.
    func clearNotified() -> (hasData: Bool, end: OutboundEnd?, initialMetadata: Metadata) {
        state.withLock { state in
            state.notified = false
            return (state.pending.readableBytes > 0, state.end, state.initialMetadata)
        }
    }

    /// Copies queued bytes into nghttp2's frame buffer. Returns the count and whether the queue is
    /// now drained with the stream ended (`end`).
    func read(into buffer: UnsafeMutableRawBufferPointer) -> (count: Int, end: OutboundEnd?) {
        let (count, end, waiters) = state.withLock { state -> (Int, OutboundEnd?, [Int: CheckedContinuation<Void, any Error>]) in
            let count = min(buffer.count, state.pending.readableBytes)
            if count > 0 {
                state.pending.readWithUnsafeReadableBytes { source in
                    buffer.baseAddress!.copyMemory(from: source.baseAddress!, byteCount: count)
                    return count
                }
                if state.pending.readableBytes == 0 {
                    // Drained: keep a small buffer for reuse, give a large one back (idle streams
                    // would otherwise each hold their peak, e.g. a thousand tails × 256 KiB).
                    if state.pending.capacity > 64 * 1024 {
                        state.pending = ByteBuffer()
                    } else {
                        state.pending.clear()
                    }
                }
            }
            var waiters: [Int: CheckedContinuation<Void, any Error>] = [:]
            if !state.waiters.isEmpty, state.pending.readableBytes <= highWatermark / 2 {
                waiters = state.waiters
                state.waiters = [:]
            }
            let end = state.pending.readableBytes == 0 ? state.end : nil
            return (count, end, waiters)
        }
        for waiter in waiters.values { waiter.resume() }
        return (count, end)
    }
}
