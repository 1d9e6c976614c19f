import NIOCore
import NIOEmbedded
import Testing

@testable import SlipwayRPC

/// The connection lifecycle as a pure state machine: events in, actions out, no sockets.
@Suite struct ConnectionStateMachineTests {
    typealias Machine = ConnectionStateMachine

    static func timings(idle: Duration? = .seconds(300), keepalive: Duration? = .seconds(60)) -> ConnectionTimings {
        var timings = ConnectionTimings()
        timings.idleTimeout = idle
        timings.keepaliveInterval = keepalive
        timings.keepaliveTimeout = .seconds(20)
        timings.shutdownGracePeriod = .seconds(10)
        return timings
    }

    @Test func startSchedulesIdleAndKeepaliveTimersAndCallsNeverTouchThem() {
        var machine = Machine(role: .server, timings: Self.timings())
        #expect(machine.started() == [.schedule(.idle, .seconds(300)), .schedule(.keepalive, .seconds(60))])
        #expect(machine.streamOpened() == [])
        #expect(machine.streamOpened() == [])
        #expect(machine.openStreams == 2)
        #expect(machine.streamClosed() == [])
        #expect(machine.streamClosed() == [])
        #expect(machine.openStreams == 0)
        // A close the machine never saw opened changes nothing.
        #expect(machine.streamClosed() == [])
        #expect(machine.openStreams == 0)
    }

    @Test func noTimersWhenTheyAreOff() {
        var machine = Machine(role: .client, timings: Self.timings(idle: nil, keepalive: nil))
        #expect(machine.started() == [])
        #expect(machine.streamOpened() == [])
        #expect(machine.streamClosed() == [])
        #expect(machine.timerFired(.idle, sinceActivity: .seconds(1000)) == [])
        #expect(machine.timerFired(.keepalive, sinceActivity: .seconds(1000)) == [])
    }

    @Test func idleTimeoutSaysGoAwayAndCloses() {
        var machine = Machine(role: .server, timings: Self.timings())
        _ = machine.started()
        let actions = machine.timerFired(.idle, sinceActivity: .seconds(300))
        #expect(Array(actions.prefix(3)) == [.notifyIdle, .sendGoAway, .close])
        #expect(actions.contains(.cancel(.keepalive)))
        #expect(machine.state == .closed)
        #expect(!machine.acceptsStreams)
        // Nothing after closing.
        #expect(machine.timerFired(.keepalive, sinceActivity: .seconds(100)) == [])
        #expect(machine.shutdownRequested() == [])
    }

    @Test func theIdleTimerWaitsWhileACallIsOpenAndForTheRestAfterTheLastOneEnded() {
        var machine = Machine(role: .server, timings: Self.timings())
        _ = machine.started()
        _ = machine.streamOpened()
        #expect(machine.timerFired(.idle, sinceActivity: .seconds(400)) == [.schedule(.idle, .seconds(300))])
        _ = machine.streamClosed()
        // The last call ended 100 s ago: 200 s are left.
        #expect(machine.timerFired(.idle, sinceActivity: .seconds(100)) == [.schedule(.idle, .seconds(200))])
        #expect(machine.state == .active)
    }

    @Test func keepaliveWaitsOutRecentActivityThenPingsAndAnAnswerKeepsTheConnection() {
        var machine = Machine(role: .client, timings: Self.timings())
        _ = machine.started()
        // Bytes arrived 45 s ago: 15 s of the interval are left.
        #expect(machine.timerFired(.keepalive, sinceActivity: .seconds(45)) == [.schedule(.keepalive, .seconds(15))])
        #expect(machine.timerFired(.keepalive, sinceActivity: .seconds(60))
            == [.sendPing(.keepalive), .schedule(.keepaliveTimeout, .seconds(20)), .schedule(.keepalive, .seconds(60))])
        // Another interval passes before the answer: no second PING while one is outstanding.
        #expect(machine.timerFired(.keepalive, sinceActivity: .seconds(61)) == [.schedule(.keepalive, .seconds(60))])
        // The shutdown PING's answer is not the keepalive's.
        #expect(machine.pingAcknowledged(.shutdown) == [])
        #expect(machine.pingAcknowledged(.keepalive) == [.cancel(.keepaliveTimeout)])
        #expect(machine.pingAcknowledged(.keepalive) == [])
        // A late timeout after the answer does nothing.
        #expect(machine.timerFired(.keepaliveTimeout, sinceActivity: .seconds(20)) == [])
        #expect(machine.state == .active)
    }

    @Test func anUnansweredKeepaliveFailsTheCallsAndCloses() {
        var machine = Machine(role: .server, timings: Self.timings())
        _ = machine.started()
        _ = machine.streamOpened()
        _ = machine.timerFired(.keepalive, sinceActivity: .seconds(60))
        let actions = machine.timerFired(.keepaliveTimeout, sinceActivity: .seconds(80))
        #expect(Array(actions.prefix(2)) == [.failOpenStreams(RPCError(.unavailable, "the peer stopped answering keepalive PINGs")), .close])
        #expect(machine.state == .closed)
        // Unknown PING payloads (a peer's own) are ignored.
        #expect(machine.pingAcknowledged(nil) == [])
    }

    @Test func serverShutdownIsANoticeThenAPingThenTheFinalGoAwayAndCallsFinish() {
        var machine = Machine(role: .server, timings: Self.timings())
        _ = machine.started()
        _ = machine.streamOpened()
        #expect(machine.shutdownRequested() == [.sendShutdownNotice, .sendPing(.shutdown), .schedule(.quiesce, .seconds(1))])
        #expect(machine.state == .quiescing)
        // A request the client sent before it saw the notice is still served.
        #expect(machine.acceptsStreams)
        _ = machine.streamOpened()
        // Asking again changes nothing.
        #expect(machine.shutdownRequested() == [])
        // The keepalive PING's answer does not prove the client saw the notice.
        #expect(machine.pingAcknowledged(.keepalive) == [])
        #expect(machine.state == .quiescing)
        #expect(machine.pingAcknowledged(.shutdown) == [.cancel(.quiesce), .sendGoAway, .schedule(.shutdownGrace, .seconds(10))])
        #expect(machine.state == .draining)
        #expect(!machine.acceptsStreams)
        #expect(machine.streamClosed() == [])
        let last = machine.streamClosed()
        #expect(last.first == .close)
        #expect(last.contains(.cancel(.shutdownGrace)))
        #expect(machine.state == .closed)
    }

    @Test func aClientThatNeverAnswersTheShutdownPingStillGetsTheFinalGoAway() {
        var machine = Machine(role: .server, timings: Self.timings())
        _ = machine.started()
        _ = machine.shutdownRequested()
        let actions = machine.timerFired(.quiesce, sinceActivity: .seconds(1))
        #expect(Array(actions.prefix(3)) == [.sendGoAway, .schedule(.shutdownGrace, .seconds(10)), .close])
        #expect(machine.state == .closed)
    }

    @Test func callsStillOpenAfterTheGracePeriodAreFailed() {
        var machine = Machine(role: .server, timings: Self.timings())
        _ = machine.started()
        _ = machine.streamOpened()
        _ = machine.shutdownRequested()
        _ = machine.pingAcknowledged(.shutdown)
        let actions = machine.timerFired(.shutdownGrace, sinceActivity: .seconds(10))
        #expect(Array(actions.prefix(2)) == [.failOpenStreams(RPCError(.unavailable, "the server is shutting down")), .close])
        #expect(machine.state == .closed)
    }

    @Test func aClientShutdownSaysGoAwayAtOnce() {
        var machine = Machine(role: .client, timings: Self.timings())
        _ = machine.started()
        _ = machine.streamOpened()
        #expect(machine.shutdownRequested() == [.sendGoAway, .schedule(.shutdownGrace, .seconds(10))])
        #expect(machine.state == .draining)
    }

    @Test func aGoAwayFromThePeerClosesOnceTheOpenCallsEnd() {
        var idle = Machine(role: .client, timings: Self.timings())
        _ = idle.started()
        #expect(idle.goAwayReceived().contains(.close))
        #expect(idle.state == .closed)

        var busy = Machine(role: .client, timings: Self.timings())
        _ = busy.started()
        _ = busy.streamOpened()
        #expect(busy.goAwayReceived() == [.cancel(.quiesce)])
        #expect(busy.state == .draining)
        #expect(busy.goAwayReceived() == [])
        #expect(busy.streamClosed().first == .close)
    }

    @Test func anEndedConnectionCancelsEveryTimer() {
        var machine = Machine(role: .server, timings: Self.timings())
        _ = machine.started()
        #expect(Set(machine.ended().map { "\($0)" }) == Set(Machine.Timer.allCases.map { "\(Machine.Action.cancel($0))" }))
        #expect(machine.ended() == [])
    }
}

/// The server side of the lifecycle on a real handler, fed bytes through an `EmbeddedChannel`.
@Suite struct ServerConnectionLifecycleTests {
    /// A client preface and an empty SETTINGS frame.
    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0]

    struct Frame {
        var type: UInt8
        var flags: UInt8
        var stream: UInt32
        var payload: [UInt8]
    }

    static func frames(_ bytes: [UInt8]) -> [Frame] {
        var frames: [Frame] = []
        var index = 0
        while index + 9 <= bytes.count {
            let length = Int(bytes[index]) << 16 | Int(bytes[index + 1]) << 8 | Int(bytes[index + 2])
            let stream = UInt32(bytes[index + 5] & 0x7F) << 24 | UInt32(bytes[index + 6]) << 16 | UInt32(bytes[index + 7]) << 8 | UInt32(bytes[index + 8])
            frames.append(Frame(type: bytes[index + 3], flags: bytes[index + 4], stream: stream, payload: Array(bytes[(index + 9)..<(index + 9 + length)])))
            index += 9 + length
        }
        return frames
    }

    static func written(_ channel: EmbeddedChannel) throws -> [Frame] {
        var bytes: [UInt8] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { bytes += buffer.readableBytesView }
        return frames(bytes)
    }

    static func lastStreamID(_ goAway: Frame) -> UInt32 {
        UInt32(goAway.payload[0] & 0x7F) << 24 | UInt32(goAway.payload[1]) << 16 | UInt32(goAway.payload[2]) << 8 | UInt32(goAway.payload[3])
    }

    static func channel(timings: ConnectionTimings = ConnectionTimings()) throws -> EmbeddedChannel {
        let handler = ServerConnectionHandler(handlers: [:], limits: RPCLimits(), timings: timings, logger: .init(label: "test"))
        let channel = EmbeddedChannel(handler: handler)
        try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        try channel.writeInbound(ByteBuffer(bytes: preface))
        _ = try written(channel)  // our SETTINGS and the SETTINGS ACK
        return channel
    }

    @Test func gracefulShutdownSendsTheNoticeAndAPingThenTheFinalGoAwayAfterTheAnswer() throws {
        let channel = try Self.channel()
        channel.pipeline.fireUserInboundEventTriggered(GracefulShutdownEvent())
        (channel.eventLoop as! EmbeddedEventLoop).run()
        let first = try Self.written(channel)
        let notice = try #require(first.first { $0.type == 7 })
        #expect(Self.lastStreamID(notice) == 0x7FFF_FFFF)
        let ping = try #require(first.first { $0.type == 6 && $0.flags & 1 == 0 })
        #expect(channel.isActive)

        // The client answers the PING: the final GOAWAY names the last stream processed (none).
        try channel.writeInbound(ByteBuffer(bytes: [0, 0, 8, 6, 1, 0, 0, 0, 0] + ping.payload))
        (channel.eventLoop as! EmbeddedEventLoop).run()
        let second = try Self.written(channel)
        let final = try #require(second.first { $0.type == 7 })
        #expect(Self.lastStreamID(final) == 0)
        #expect(!channel.isActive)
    }

    @Test func withoutAnAnswerTheFinalGoAwayFollowsAfterTheQuiescePeriod() throws {
        let channel = try Self.channel()
        channel.pipeline.fireUserInboundEventTriggered(GracefulShutdownEvent())
        let loop = channel.eventLoop as! EmbeddedEventLoop
        loop.run()
        #expect(try Self.written(channel).filter { $0.type == 7 }.count == 1)
        loop.advanceTime(by: .milliseconds(999))
        #expect(try Self.written(channel).isEmpty)
        loop.advanceTime(by: .milliseconds(1))
        #expect(try Self.written(channel).filter { $0.type == 7 }.count == 1)
        #expect(!channel.isActive)
    }

    @Test func aQuietConnectionIsPingedAndClosedWhenThePingGoesUnanswered() throws {
        var timings = ConnectionTimings()
        timings.keepaliveInterval = .seconds(5)
        timings.keepaliveTimeout = .seconds(2)
        timings.idleTimeout = nil
        let channel = try Self.channel(timings: timings)
        let loop = channel.eventLoop as! EmbeddedEventLoop
        loop.advanceTime(by: .seconds(5))
        let ping = try #require(try Self.written(channel).first { $0.type == 6 && $0.flags & 1 == 0 })
        #expect(ping.payload.count == 8)
        #expect(channel.isActive)
        loop.advanceTime(by: .seconds(2))
        #expect(!channel.isActive)
    }

    @Test func anIdleConnectionGetsGoAwayAndCloses() throws {
        var timings = ConnectionTimings()
        timings.keepaliveInterval = nil
        timings.idleTimeout = .seconds(30)
        let channel = try Self.channel(timings: timings)
        let loop = channel.eventLoop as! EmbeddedEventLoop
        loop.advanceTime(by: .seconds(29))
        #expect(channel.isActive)
        loop.advanceTime(by: .seconds(1))
        #expect(try Self.written(channel).contains { $0.type == 7 })
        #expect(!channel.isActive)
    }
}

@Suite struct HandlerTasksTests {
    @Test func waitForAllReturnsOnceEveryHandlerEnded() async {
        let tasks = HandlerTasks()
        await tasks.waitForAll()  // none: returns at once
        let (started, startedContinuation) = AsyncStream<Void>.makeStream()
        var handles: [Task<Void, Never>] = []
        for _ in 0..<3 {
            handles.append(tasks.spawn {
                startedContinuation.yield()
                // Runs until cancelled.
                while !Task.isCancelled { try? await Task.sleep(for: .seconds(60)) }
            })
        }
        var iterator = started.makeAsyncIterator()
        for _ in 0..<3 { _ = await iterator.next() }
        #expect(tasks.count == 3)
        // Two end; the wait goes on for the third.
        handles[0].cancel()
        handles[1].cancel()
        let waiting = Task { await tasks.waitForAll() }
        await handles[0].value
        await handles[1].value
        #expect(tasks.count == 1)
        handles[2].cancel()
        await waiting.value
        #expect(tasks.count == 0)
    }
}
