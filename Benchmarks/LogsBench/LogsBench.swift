import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import SlipwayProtos
import SlipwayRPC
import SlipwayServiceKit
import Synchronization

// Fan-out benchmark of slipway-logs against Redis pub/sub (scripts/bench-logs.sh drives it).
//
//   slipway-logs-bench slipway --address 127.0.0.1:7006 --server-pid PID [--subscribers 1000 --connections 16]
//   slipway-logs-bench redis   --address 127.0.0.1:6379 --server-pid PID [--subscribers 1000]
//   slipway-logs-bench idle    --address 127.0.0.1:7006 --server-pid PID [--subscribers 10000]
//
// One writer appends ~100-byte lines in batches to one stream (one channel); every subscriber must
// receive exactly the acknowledged lines, in order. Latency: from the writer's acknowledgement (the
// Append response of the batch / the PUBLISH reply) to a subscriber receiving the line. The result is
// one JSON line on stdout; progress goes to stderr.

typealias Logs = Slipway_Logs_V1_Logs

@main
struct LogsBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slipway-logs-bench",
        abstract: "Fan-out benchmark: slipway-logs Tail against Redis pub/sub, and idle subscribers' memory.",
        subcommands: [SlipwayFanOut.self, RedisFanOut.self, IdleSubscribers.self])
}

struct LoadOptions: ParsableArguments {
    @Option(help: "HOST:PORT of the server under test.") var address: String
    @Option(help: "slipway-logs' data directory: the bench presents its operator identity (mutual TLS).") var dataDir: String?
    @Option(help: "Pid of the server process, for its RSS (/proc/PID/status).") var serverPid: Int?
    @Option(help: "Subscribers.") var subscribers = 1000
    @Option(help: "Seconds the writer writes.") var duration = 10.0
    @Option(help: "Lines per batch.") var batch = 100
    @Option(help: "Bytes of text per line.") var lineBytes = 100
    @Option(help: "Target lines/s of the writer; 0 writes the next batch as soon as the previous one is acknowledged.")
    var rate = 0.0
    @Option(help: "The writer waits while the slowest subscriber is more than this many lines behind (0: no bound).")
    var maxLag = 5000
    @Option(help: "Seconds subscribers may take after the writer stopped to receive the last line.") var drainTimeout = 60.0
    @Option(help: "Batches the writer may have sent and not yet seen acknowledged.") var inFlight = 4

    var hostPort: (String, Int) {
        get throws {
            guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
                throw ValidationError("--address must be HOST:PORT, got \(address)")
            }
            return (String(address[..<colon]), port)
        }
    }
}

/// Paces the writer: the batch-th batch not before start + batch * lines / rate; the lag bound.
struct Pacer {
    let rate: Double
    let batch: Int
    let start = ContinuousClock.now
    var sent = 0

    mutating func waitForTurn(maxLag: Int, acknowledged: UInt64, recorders: [Recorder], until deadline: ContinuousClock.Instant) async {
        let acknowledged = acknowledged
        if rate > 0 {
            let due = start + .seconds(Double(sent * batch) / rate)
            if due > ContinuousClock.now { try? await Task.sleep(until: min(due, deadline)) }
        }
        if maxLag > 0 && acknowledged > UInt64(maxLag) {
            let floor = acknowledged - UInt64(maxLag)
            while minimumProgress(recorders) < floor && ContinuousClock.now < deadline {
                try? await Task.sleep(for: .microseconds(500))
            }
        }
        sent += 1
    }
}

// MARK: slipway-logs

struct SlipwayFanOut: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "slipway", abstract: "Fan-out through slipway-logs (Append + Tail).")

    @OptionGroup var load: LoadOptions
    @Option(help: "Client connections the subscribers are spread over (one RPCClient each).") var connections = 16
    @Flag(help: "Subscribers decode every TailResponse fully (default: only the seq, as the Redis subscribers do).")
    var fullDecode = false

    func run() async throws {
        let (host, port) = try load.hostPort
        let clock = BenchClock()
        var key = Slipway_Logs_V1_StreamKey()
        key.environmentId = "bench"
        key.serviceId = "fanout-\(UInt64(Date().timeIntervalSince1970 * 1000))"
        let streamKey = key
        let writerClient = try logsClient(host: host, port: port, dataDir: load.dataDir)
        let clients = try (0..<max(1, connections)).map { _ in try logsClient(host: host, port: port, dataDir: load.dataDir) }
        let appender = try await Appender(client: writerClient, key: key, lineBytes: load.lineBytes)

        // Warm-up: the subscribers start after this line and must all have received the next one.
        let first = try await appender.append(count: 1).last
        let recorders = (0..<load.subscribers).map { _ in Recorder() }
        // The next warm-up line is seq first + 1 (one writer per stream); measured lines come after it.
        let base = first + 1
        for recorder in recorders { recorder.base = base }
        let errors = ErrorLog()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (i, recorder) in recorders.enumerated() {
                group.addTask {
                    await tail(client: clients[i % clients.count], key: streamKey, after: first, recorder: recorder, clock: clock, errors: errors, fullDecode: fullDecode)
                }
            }
            let warm = try await appender.append(count: 1)
            guard warm.first == base else { throw ValidationError("warm-up line got seq \(warm.first), expected \(base)") }
            guard await waitUntil(timeout: .seconds(120), { minimumProgress(recorders) >= base }) else {
                throw ValidationError("subscribers did not all receive the warm-up line within 120 s")
            }
            note("slipway: \(recorders.count) subscribers on \(clients.count) connections receive; writing for \(load.duration) s")

            // The measured run: the writer keeps up to --in-flight batches unacknowledged; a second task reads the acks.
            let flight = Flight()
            flight.lastAcked.store(base, ordering: .releasing)
            let call = appender.call
            let ackReader = Task { () throws -> [(first: UInt64, last: UInt64, time: UInt32)] in
                var acks: [(first: UInt64, last: UInt64, time: UInt32)] = []
                var iterator = call.responses(Slipway_Logs_V1_AppendResponse.self).makeAsyncIterator()
                while let response = try await iterator.next() {
                    let time = clock.micros()
                    guard response.ranges.count == 1 else { throw ValidationError("unexpected acknowledgement \(response)") }
                    acks.append((response.ranges[0].firstSeq, response.ranges[0].lastSeq, time))
                    flight.lastAcked.store(response.ranges[0].lastSeq, ordering: .releasing)
                    flight.acked.wrappingAdd(1, ordering: .releasing)
                }
                return acks
            }
            var sendTimes: [UInt32] = []
            var pacer = Pacer(rate: load.rate, batch: load.batch)
            let start = clock.micros()
            let stop = ContinuousClock.now + .seconds(load.duration)
            while ContinuousClock.now < stop {
                await pacer.waitForTurn(maxLag: load.maxLag, acknowledged: flight.lastAcked.load(ordering: .acquiring), recorders: recorders, until: stop)
                await flight.waitForRoom(limit: load.inFlight, until: stop + .seconds(30))
                sendTimes.append(clock.micros())
                try await appender.send(count: load.batch)
                flight.sent.wrappingAdd(1, ordering: .releasing)
            }
            call.finishSending()
            let acks = try await ackReader.value
            guard acks.count == sendTimes.count else {
                throw ValidationError("\(sendTimes.count) batches sent, \(acks.count) acknowledged")
            }
            var ackTimes: [UInt32] = []
            var lineSendTimes: [UInt32] = []
            var last = base
            for (i, ack) in acks.enumerated() {
                guard ack.first == last + 1 else {
                    throw ValidationError("acknowledged range \(ack.first)...\(ack.last) does not follow \(last)")
                }
                let count = Int(ack.last - ack.first + 1)
                ackTimes.append(contentsOf: repeatElement(ack.time, count: count))
                lineSendTimes.append(contentsOf: repeatElement(sendTimes[i], count: count))
                last = ack.last
            }
            let final = last
            note("slipway: \(ackTimes.count) lines acknowledged; waiting for delivery of seq \(final)")
            let drained = await waitUntil(timeout: .seconds(load.drainTimeout)) { minimumProgress(recorders) >= final }
            if !drained { note("slipway: not every subscriber received the last line within \(load.drainTimeout) s") }
            let memory = serverMemory(pid: load.serverPid)
            group.cancelAll()
            try await group.waitForAll()
            let result = evaluate(system: "slipway", ackTimes: ackTimes, sendTimes: lineSendTimes, start: start, recorders: recorders, rss: memory, errors: errors.all)
            print(result.json)
        }
        await writerClient.close()
        for client in clients { await client.close() }
    }
}

/// Tails `key` after `after`, recording every line until cancelled.
func tail(
    client: RPCClient, key: Slipway_Logs_V1_StreamKey, after: UInt64, recorder: Recorder, clock: BenchClock, errors: ErrorLog,
    fullDecode: Bool = false
) async {
    var request = Slipway_Logs_V1_TailRequest()
    request.stream = key
    request.start = .afterSeq(after)
    do {
        if fullDecode {
            try await client.serverStreaming(Logs.Tail.self, request) { responses in
                for try await response in responses {
                    switch response.item {
                    case .line(let line)?: recorder.record(seq: line.seq, at: clock.micros())
                    case .dropped?: recorder.droppedMarkers += 1
                    case nil: break
                    }
                }
            }
        } else {
            try await client.serverStreaming(Logs.Tail.path, request: request, responseType: TailSeq.self) { responses in
                for try await response in responses {
                    if response.dropped { recorder.droppedMarkers += 1 } else { recorder.record(seq: response.seq, at: clock.micros()) }
                }
            }
        }
        if !Task.isCancelled { errors.add("a Tail ended by itself") }
    } catch let error as RPCError where error.code == .cancelled {
    } catch {
        if !Task.isCancelled { errors.add("Tail: \(error)") }
    }
}

/// Errors of the subscribers' calls.
final class ErrorLog: Sendable {
    private let list = Mutex<[String]>([])
    func add(_ error: String) { list.withLock { $0.append(error) } }
    var all: [String] { list.withLock { $0 } }
}

/// The writer: one Append call, one batch at a time.
final class Appender {
    let call: ClientCall
    let key: Slipway_Logs_V1_StreamKey
    let text: String
    private var iterator: ResponseStream<Slipway_Logs_V1_AppendResponse>.AsyncIterator
    private var batch: UInt64 = 0

    init(client: RPCClient, key: Slipway_Logs_V1_StreamKey, lineBytes: Int) async throws {
        call = try await client.makeCall(path: Logs.Append.path)
        self.key = key
        text = lineText(0, bytes: lineBytes)
        iterator = call.responses(Slipway_Logs_V1_AppendResponse.self).makeAsyncIterator()
    }

    /// Sends a batch of `count` lines without waiting for its acknowledgement.
    func send(count: Int) async throws {
        var request = Slipway_Logs_V1_AppendRequest()
        batch += 1
        request.batchId = batch
        var line = Slipway_Logs_V1_LogLine()
        line.stream = key
        line.level = .info
        line.source = .stdout
        line.text = text
        line.instanceId = "bench-0"
        request.lines = Array(repeating: line, count: count)
        try await call.requests(Slipway_Logs_V1_AppendRequest.self).write(request)
    }

    /// Appends `count` lines; returns the range they received once the batch is acknowledged.
    func append(count: Int) async throws -> (first: UInt64, last: UInt64) {
        try await send(count: count)
        let batchId = batch
        guard let response = try await iterator.next() else {
            throw ValidationError("the Append call ended without acknowledging batch \(batchId)")
        }
        guard response.batchId == batchId, response.ranges.count == 1 else {
            throw ValidationError("unexpected acknowledgement \(response) for batch \(batchId)")
        }
        return (response.ranges[0].firstSeq, response.ranges[0].lastSeq)
    }

    func finish() async {
        call.finishSending()
        while (try? await iterator.next()) != nil {}
    }
}

// MARK: Redis

struct RedisFanOut: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "redis", abstract: "The same fan-out through Redis pub/sub (PUBLISH + SUBSCRIBE).")

    @OptionGroup var load: LoadOptions

    func run() async throws {
        let (host, port) = try load.hostPort
        let group = MultiThreadedEventLoopGroup.singleton
        let clock = BenchClock()
        let channelName = "bench-\(UInt64(Date().timeIntervalSince1970 * 1000))"
        let recorders = (0..<load.subscribers).map { _ in Recorder() }

        // Subscribers: one connection each, 100 connecting at a time.
        var subscribers: [any Channel] = []
        var index = 0
        while index < recorders.count {
            let chunk = recorders[index..<min(index + 100, recorders.count)]
            index += chunk.count
            try await withThrowingTaskGroup(of: (any Channel).self) { tasks in
                for recorder in chunk {
                    tasks.addTask {
                        let promise = group.next().makePromise(of: Void.self)
                        let channel = try await connectRedis(host: host, port: port, group: group) { _ in
                            RESPSubscriberHandler(recorder: recorder, clock: clock, subscribed: promise)
                        }
                        var buffer = channel.allocator.buffer(capacity: 64)
                        writeCommand(["SUBSCRIBE", channelName], into: &buffer)
                        try await channel.writeAndFlush(buffer)
                        try await promise.futureResult.get()
                        return channel
                    }
                }
                for try await channel in tasks { subscribers.append(channel) }
            }
        }
        note("redis: \(subscribers.count) subscribers confirmed; writing for \(load.duration) s")

        let acks = AckTimes(subscribers: recorders.count)
        let flight = Flight()
        let batch = load.batch
        let publisher = try await connectRedis(host: host, port: port, group: group) { _ in
            RESPPublisherHandler(clock: clock, acks: acks, flight: flight, batch: batch)
        }
        let body = String(lineText(0, bytes: load.lineBytes).dropFirst(12))  // same size as a slipway line with its seq prefix
        var pacer = Pacer(rate: load.rate, batch: load.batch)
        let start = clock.micros()
        let stop = ContinuousClock.now + .seconds(load.duration)
        var last: UInt64 = 0
        var sendTimes: [UInt32] = []
        while ContinuousClock.now < stop {
            await pacer.waitForTurn(maxLag: load.maxLag, acknowledged: flight.lastAcked.load(ordering: .acquiring), recorders: recorders, until: stop)
            await flight.waitForRoom(limit: load.inFlight, until: stop + .seconds(30))
            var buffer = publisher.allocator.buffer(capacity: load.batch * (load.lineBytes + 64))
            for i in 1...UInt64(load.batch) {
                writeCommand(["PUBLISH", channelName, "\(last + i):\(body)"], into: &buffer)
            }
            sendTimes.append(contentsOf: repeatElement(clock.micros(), count: load.batch))
            flight.sent.wrappingAdd(1, ordering: .releasing)
            try await publisher.writeAndFlush(buffer)
            last += UInt64(load.batch)
        }
        await flight.waitForRoom(limit: 1, until: ContinuousClock.now + .seconds(60))
        var errors: [String] = []
        if flight.acked.load(ordering: .acquiring) != flight.sent.load(ordering: .acquiring) {
            errors.append("\(flight.sent.load(ordering: .acquiring)) batches sent, \(flight.acked.load(ordering: .acquiring)) acknowledged")
        }
        let ackTimes = acks.times
        errors += acks.errors.prefix(3)
        if acks.short > 0 { errors.append("\(acks.short) PUBLISH replies counted fewer receivers than subscribers") }
        let final = last
        note("redis: \(final) lines acknowledged; waiting for delivery")
        let drained = await waitUntil(timeout: .seconds(load.drainTimeout)) { minimumProgress(recorders) >= final }
        if !drained { note("redis: not every subscriber received the last line within \(load.drainTimeout) s") }
        let memory = serverMemory(pid: load.serverPid)
        try? await publisher.close()
        for channel in subscribers { try? await channel.close() }
        for recorder in recorders { if let error = recorder.error { errors.append(error) } }
        let result = evaluate(system: "redis", ackTimes: Array(ackTimes.prefix(Int(final))), sendTimes: sendTimes, start: start, recorders: recorders, rss: memory, errors: errors)
        print(result.json)
    }
}

// MARK: idle subscribers

struct IdleSubscribers: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "idle", abstract: "Many idle Tail subscribers: the server's memory.")

    @Option(help: "HOST:PORT of slipway-logs.") var address: String
    @Option(help: "slipway-logs' data directory: the bench presents its operator identity (mutual TLS).") var dataDir: String?
    @Option(help: "Pid of the server process, for its RSS.") var serverPid: Int?
    @Option(help: "Idle subscribers.") var subscribers = 10_000
    @Option(help: "Subscribers per client connection (the server allows 256 streams per connection).") var perConnection = 200
    @Option(help: "Seconds to hold the subscribers open while sampling the server's RSS.") var hold = 3.0

    func run() async throws {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw ValidationError("--address must be HOST:PORT")
        }
        let host = String(address[..<colon])
        let clock = BenchClock()
        var key = Slipway_Logs_V1_StreamKey()
        key.environmentId = "bench"
        key.serviceId = "idle-\(UInt64(Date().timeIntervalSince1970 * 1000))"
        let streamKey = key
        let writerClient = try logsClient(host: host, port: port, dataDir: dataDir)
        let appender = try await Appender(client: writerClient, key: key, lineBytes: 100)
        let first = try await appender.append(count: 1).last
        let before = serverMemory(pid: serverPid)
        let clients = try (0..<(subscribers + perConnection - 1) / perConnection).map { _ in try logsClient(host: host, port: port, dataDir: dataDir) }
        let recorders = (0..<subscribers).map { _ in Recorder() }
        let errors = ErrorLog()
        let started = ContinuousClock.now
        var peak = (rss: 0, hwm: 0)
        var established = false
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (i, recorder) in recorders.enumerated() {
                group.addTask {
                    await tail(client: clients[i / perConnection], key: streamKey, after: first, recorder: recorder, clock: clock, errors: errors)
                }
            }
            // Every subscriber is live once it received a line appended after all of them were opened.
            let mark = try await appender.append(count: 1).last
            established = await waitUntil(timeout: .seconds(180), every: .milliseconds(50)) { minimumProgress(recorders) >= mark }
            let connectSeconds = Double((ContinuousClock.now - started).components.attoseconds) / 1e18 + Double((ContinuousClock.now - started).components.seconds)
            note("idle: \(recorders.filter { $0.progress.load(ordering: .relaxed) >= mark }.count) of \(subscribers) subscribers live after \(fmt(connectSeconds)) s on \(clients.count) connections")
            // Hold them idle and sample the server's memory.
            let end = ContinuousClock.now + .seconds(hold)
            repeat {
                let memory = serverMemory(pid: serverPid)
                peak = (max(peak.rss, memory.rss), max(peak.hwm, memory.hwm))
                try? await Task.sleep(for: .milliseconds(250))
            } while ContinuousClock.now < end
            group.cancelAll()
            try await group.waitForAll()
        }
        let live = recorders.filter { $0.progress.load(ordering: .relaxed) > first }.count
        let errorList = errors.all
        print("""
            {"system":"slipway-idle","subscribers":\(subscribers),"connections":\(clients.count),"live":\(live),"established":\(established),\
            "server_rss_before_kib":\(before.rss),"server_rss_kib":\(peak.rss),"server_hwm_kib":\(peak.hwm),\
            "errors":\(errorList.count),"error_sample":"\(errorList.prefix(2).joined(separator: " | ").replacingOccurrences(of: "\"", with: "'"))"}
            """)
        await appender.finish()
        await writerClient.close()
        for client in clients { await client.close() }
    }
}

/// A client of slipway-logs: as the operator over mutual TLS when given the platform's data
/// directory (every platform service's port), plaintext otherwise.
func logsClient(host: String, port: Int, dataDir: String?) throws -> RPCClient {
    guard let dataDir else { return RPCClient(host: host, port: port) }
    let pki = PlatformPKI(dataDirectory: dataDir)
    let identity = try ServiceIdentity.load(
        .operator,
        paths: .init(
            identityDirectory: pki.identityDirectory(.operator), caCertificate: pki.caCertificatePath, revocationList: nil,
            renewedDirectory: pki.identityDirectory(.operator)))
    return identity.client(for: .logs, at: ServiceAddress(host: host, port: port))
}
