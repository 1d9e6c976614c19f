/// The life of one HTTP/2 connection apart from its streams: keepalive, idle timeout and graceful
/// shutdown. Pure: the connection handler reports events and carries out the actions returned (it
/// owns the timers, the nghttp2 session and the socket), so every path is tested without sockets.
///
/// Graceful shutdown of a server is the two-step GOAWAY of RFC 9113 §6.8 (what nghttp2's
/// `nghttp2_submit_shutdown_notice` is for): a first GOAWAY with the largest stream id tells the
/// client to open no more streams, a PING measures when it has seen that, and only then the final
/// GOAWAY names the last stream processed, so no request already on its way is refused. Open calls
/// then have the grace period to finish before they are failed and the connection closes.
struct ConnectionStateMachine {
    enum Role: Equatable { case server, client }

    enum State: Equatable {
        /// Accepting streams.
        case active
        /// Shutdown notice sent; streams are still accepted until the peer acknowledges the PING
        /// sent after it (or the wait for it ends).
        case quiescing
        /// Final GOAWAY sent (or received): no new streams; closes when the open ones end.
        case draining
        /// Closed, or about to be.
        case closed
    }

    /// One timer per purpose, each scheduled and cancelled by the actions.
    enum Timer: Hashable, CaseIterable {
        /// No stream for the idle timeout (checked against the last call's end when it fires, so
        /// calls opening and closing never touch the timer).
        case idle
        /// Time to send a keepalive PING (checked against the last activity when it fires).
        case keepalive
        /// A keepalive PING went unanswered.
        case keepaliveTimeout
        /// The shutdown notice's PING went unanswered: send the final GOAWAY anyway.
        case quiesce
        /// Open calls had their grace period.
        case shutdownGrace
    }

    /// PING payloads, to tell the keepalive PING's acknowledgement from the shutdown notice's.
    enum Ping: UInt64 {
        case keepalive = 1
        case shutdown = 2
    }

    enum Action: Equatable {
        case schedule(Timer, Duration)
        case cancel(Timer)
        case sendPing(Ping)
        case sendShutdownNotice
        /// GOAWAY naming the last stream processed.
        case sendGoAway
        /// Fail every open call with this reason (the connection is going).
        case failOpenStreams(RPCError)
        /// Tell the role's handler the idle timeout expired (before `sendGoAway` / `close`).
        case notifyIdle
        case close
    }

    let role: Role
    let timings: ConnectionTimings
    private(set) var state = State.active
    private(set) var openStreams = 0
    private var keepaliveOutstanding = false

    init(role: Role, timings: ConnectionTimings) {
        self.role = role
        self.timings = timings
    }

    /// Whether a new stream from the peer may be served.
    var acceptsStreams: Bool { state == .active || state == .quiescing }

    /// The channel is up.
    mutating func started() -> [Action] {
        var actions: [Action] = []
        if let idle = timings.idleTimeout { actions.append(.schedule(.idle, idle)) }
        if let interval = timings.keepaliveInterval { actions.append(.schedule(.keepalive, interval)) }
        return actions
    }

    mutating func streamOpened() -> [Action] {
        openStreams += 1
        return []
    }

    mutating func streamClosed() -> [Action] {
        guard openStreams > 0 else { return [] }
        openStreams -= 1
        guard openStreams == 0 else { return [] }
        switch state {
        case .active, .quiescing:
            return []
        case .draining:
            return closing()
        case .closed:
            return []
        }
    }

    /// `sinceActivity`: for the idle timer, the time since the last call ended (or the connection
    /// started); for the keepalive timer, since bytes last arrived.
    mutating func timerFired(_ timer: Timer, sinceActivity: Duration) -> [Action] {
        guard state != .closed else { return [] }
        switch timer {
        case .idle:
            guard let idle = timings.idleTimeout else { return [] }
            if openStreams > 0 { return [.schedule(.idle, idle)] }
            if sinceActivity < idle { return [.schedule(.idle, idle - sinceActivity)] }
            state = .closed
            return [.notifyIdle, .sendGoAway, .close] + cancelAll(except: .idle)
        case .keepalive:
            guard let interval = timings.keepaliveInterval else { return [] }
            if keepaliveOutstanding { return [.schedule(.keepalive, interval)] }
            if sinceActivity < interval {
                // Something arrived since: wait out the rest of the interval.
                return [.schedule(.keepalive, interval - sinceActivity)]
            }
            keepaliveOutstanding = true
            return [.sendPing(.keepalive), .schedule(.keepaliveTimeout, timings.keepaliveTimeout), .schedule(.keepalive, interval)]
        case .keepaliveTimeout:
            guard keepaliveOutstanding else { return [] }
            state = .closed
            return [.failOpenStreams(RPCError(.unavailable, "the peer stopped answering keepalive PINGs")), .close] + cancelAll(except: .keepaliveTimeout)
        case .quiesce:
            guard state == .quiescing else { return [] }
            return drain()
        case .shutdownGrace:
            state = .closed
            return [.failOpenStreams(RPCError(.unavailable, "the server is shutting down")), .close] + cancelAll(except: .shutdownGrace)
        }
    }

    mutating func pingAcknowledged(_ ping: Ping?) -> [Action] {
        switch ping {
        case .keepalive?:
            guard keepaliveOutstanding else { return [] }
            keepaliveOutstanding = false
            return [.cancel(.keepaliveTimeout)]
        case .shutdown?:
            guard state == .quiescing else { return [] }
            return [.cancel(.quiesce)] + drain()
        case nil:
            return []
        }
    }

    /// Graceful shutdown asked for (the server is stopping). A client just says GOAWAY and goes
    /// once its calls end.
    mutating func shutdownRequested() -> [Action] {
        guard state == .active else { return [] }
        switch role {
        case .server:
            state = .quiescing
            // One round trip is enough; the keepalive timeout bounds a peer that never answers.
            return [.sendShutdownNotice, .sendPing(.shutdown), .schedule(.quiesce, min(timings.keepaliveTimeout, .seconds(1)))]
        case .client:
            return drain()
        }
    }

    /// The peer sent GOAWAY: it opens no more streams; the connection goes when the open ones end.
    mutating func goAwayReceived() -> [Action] {
        switch state {
        case .active, .quiescing:
            state = .draining
            var actions: [Action] = [.cancel(.quiesce)]
            if openStreams == 0 { actions += closing() }
            return actions
        case .draining, .closed:
            return []
        }
    }

    /// The connection failed or closed under us.
    mutating func ended() -> [Action] {
        guard state != .closed else { return [] }
        state = .closed
        return cancelAll(except: nil)
    }

    private mutating func drain() -> [Action] {
        state = .draining
        var actions: [Action] = [.sendGoAway, .schedule(.shutdownGrace, timings.shutdownGracePeriod)]
        if openStreams == 0 { actions += closing() }
        return actions
    }

    private mutating func closing() -> [Action] {
        state = .closed
        return [.close] + cancelAll(except: nil)
    }

    private func cancelAll(except timer: Timer?) -> [Action] {
        Timer.allCases.filter { $0 != timer }.map { .cancel($0) }
    }
}
