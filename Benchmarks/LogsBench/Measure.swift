import Foundation
import NIOCore
import SlipwayProtobuf
import Synchronization

/// Monotonic clock in microseconds since the run's epoch (CLOCK_MONOTONIC, shared by every task).
struct BenchClock: Sendable {
    let epoch: UInt64 = NIODeadline.now().uptimeNanoseconds

    /// Microseconds since the epoch, plus 1 (0 stays "not recorded").
    func micros() -> UInt32 {
        let nanos: UInt64 = NIODeadline.now().uptimeNanoseconds &- epoch
        let micros: UInt64 = nanos / 1000 &+ 1
        return UInt32(micros & 0xFFFF_FFFF)
    }
}

/// What one subscriber received: a receive time per sequence number after `base`, and anomalies.
/// Written only by the subscriber's own task or event loop while the run lasts; read after it ended.
final class Recorder: @unchecked Sendable {
    /// Highest sequence number received so far (for the writer's lag bound and the end of the run).
    let progress = Atomic<UInt64>(0)
    /// Lines at or before this sequence number are warm-up, not measured.
    var base: UInt64 = 0
    /// Receive time (BenchClock.micros) of seq `base + 1 + i`; 0 when not received.
    var times: [UInt32] = []
    /// Highest seq seen, for order checks.
    var last: UInt64 = 0
    var duplicated = 0
    var outOfOrder = 0
    var droppedMarkers = 0
    var error: String?

    init() {
        times.reserveCapacity(1 << 14)
    }

    @inline(__always)
    func record(seq: UInt64, at time: UInt32) {
        if seq > base {
            let index = Int(seq - base - 1)
            if index >= times.count {
                times.append(contentsOf: repeatElement(0, count: index - times.count + 1))
            }
            if times[index] != 0 {
                duplicated += 1
            } else {
                times[index] = time
            }
            if seq <= last { outOfOrder += 1 }
        }
        if seq > last { last = seq }
        progress.store(last, ordering: .releasing)
    }
}

/// Latency histogram: 1 µs buckets up to 100 ms, 1 ms buckets up to 100 s.
struct Histogram {
    private var fine = [Int](repeating: 0, count: 100_000)
    private var coarse = [Int](repeating: 0, count: 100_000)
    private(set) var count = 0

    mutating func add(micros: Int) {
        count += 1
        if micros < 100_000 { fine[max(0, micros)] += 1 } else { coarse[min(99_999, micros / 1000)] += 1 }
    }

    /// The value at quantile q, in milliseconds.
    func quantile(_ q: Double) -> Double {
        guard count > 0 else { return .nan }
        let rank = Int((Double(count - 1) * q).rounded(.down)) + 1
        var seen = 0
        for (i, n) in fine.enumerated() where n > 0 {
            seen += n
            if seen >= rank { return Double(i) / 1000 }
        }
        for (i, n) in coarse.enumerated() where n > 0 {
            seen += n
            if seen >= rank { return Double(i) }
        }
        return .infinity
    }
}

/// The outcome of one fan-out run.
struct FanOutResult {
    var system: String
    var subscribers: Int
    var lines: Int  // lines the writer got acknowledged (measured part)
    var seconds: Double  // first measured write to the last line delivered
    var delivered: Int
    var lost: Int
    var duplicated: Int
    var outOfOrder: Int
    var subscribersWithLoss: Int
    var receivedBeforeAck: Int
    var p50: Double
    var p99: Double
    var p999: Double
    var maxLatency: Double
    var sendP50: Double
    var sendP99: Double
    var sendP999: Double
    var rssKiB: Int
    var hwmKiB: Int
    var errors: [String]

    var json: String {
        let errorText = errors.prefix(3).joined(separator: " | ").replacingOccurrences(of: "\"", with: "'")
        return """
            {"system":"\(system)","subscribers":\(subscribers),"lines":\(lines),"seconds":\(fmt(seconds)),"delivered":\(delivered),\
            "delivered_per_s":\(fmt(Double(delivered) / max(seconds, 1e-9))),"writer_lines_per_s":\(fmt(Double(lines) / max(seconds, 1e-9))),\
            "p50_ms":\(fmt(p50)),"p99_ms":\(fmt(p99)),"p999_ms":\(fmt(p999)),"max_ms":\(fmt(maxLatency)),\
            "send_p50_ms":\(fmt(sendP50)),"send_p99_ms":\(fmt(sendP99)),"send_p999_ms":\(fmt(sendP999)),\
            "lost":\(lost),"duplicated":\(duplicated),"out_of_order":\(outOfOrder),"subscribers_with_loss":\(subscribersWithLoss),\
            "received_before_ack":\(receivedBeforeAck),"server_rss_kib":\(rssKiB),"server_hwm_kib":\(hwmKiB),"errors":\(errors.count),"error_sample":"\(errorText)"}
            """
    }
}

func fmt(_ value: Double) -> String {
    value.isFinite ? String(format: "%.3f", value) : "null"
}

/// Combines the writer's acknowledgement times with every subscriber's receive times.
/// `ackTimes[i]` is the ack time of seq `base + 1 + i` (`sendTimes[i]` when its batch was written);
/// every subscriber must have exactly those seqs.
func evaluate(
    system: String, ackTimes: [UInt32], sendTimes: [UInt32], start: UInt32, recorders: [Recorder], rss: (Int, Int), errors: [String]
) -> FanOutResult {
    var histogram = Histogram()
    var fromSend = Histogram()
    var delivered = 0, lost = 0, duplicated = 0, outOfOrder = 0, withLoss = 0, early = 0
    var lastReceive: UInt32 = start
    var maxLatency = 0
    for recorder in recorders {
        var missing = 0
        for (i, ack) in ackTimes.enumerated() {
            let received = i < recorder.times.count ? recorder.times[i] : 0
            if received == 0 { missing += 1; continue }
            delivered += 1
            lastReceive = max(lastReceive, received)
            let latency = Int(received) - Int(ack)
            if latency < 0 { early += 1 }
            maxLatency = max(maxLatency, latency)
            histogram.add(micros: max(0, latency))
            fromSend.add(micros: Int(received) - Int(sendTimes[i]))
        }
        // Anything beyond the acknowledged seqs was never acknowledged: count it as an anomaly.
        if recorder.times.count > ackTimes.count {
            duplicated += recorder.times[ackTimes.count...].filter { $0 != 0 }.count
        }
        lost += missing
        if missing > 0 || recorder.droppedMarkers > 0 { withLoss += 1 }
        duplicated += recorder.duplicated
        outOfOrder += recorder.outOfOrder
    }
    let seconds = Double(Int(lastReceive) - Int(start)) / 1_000_000
    return FanOutResult(
        system: system, subscribers: recorders.count, lines: ackTimes.count, seconds: seconds, delivered: delivered,
        lost: lost, duplicated: duplicated, outOfOrder: outOfOrder, subscribersWithLoss: withLoss, receivedBeforeAck: early,
        p50: histogram.quantile(0.50), p99: histogram.quantile(0.99), p999: histogram.quantile(0.999),
        maxLatency: Double(maxLatency) / 1000,
        sendP50: fromSend.quantile(0.50), sendP99: fromSend.quantile(0.99), sendP999: fromSend.quantile(0.999), rssKiB: rss.0, hwmKiB: rss.1, errors: errors)
}

/// VmRSS and VmHWM of a process, in KiB (0 when unknown).
func serverMemory(pid: Int?) -> (rss: Int, hwm: Int) {
    guard let pid, let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return (0, 0) }
    var rss = 0, hwm = 0
    for line in status.split(separator: "\n") {
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard fields.count >= 2, let value = Int(fields[1]) else { continue }
        if fields[0] == "VmRSS:" { rss = value }
        if fields[0] == "VmHWM:" { hwm = value }
    }
    return (rss, hwm)
}

/// Prints progress to stderr.
func note(_ text: String) {
    FileHandle.standardError.write(Data(("[bench] " + text + "\n").utf8))
}

/// The text of a bench line: its seq-independent payload of about `bytes` bytes.
func lineText(_ index: UInt64, bytes: Int) -> String {
    let head = "bench line \(index) "
    return head + String(repeating: "x", count: max(0, bytes - head.utf8.count))
}

/// Waits until `condition` holds or `timeout` passed (checks every `every`); returns whether it held.
func waitUntil(timeout: Duration, every: Duration = .milliseconds(5), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: every)
    }
    return true
}

/// What the writer has in flight: batches sent and acknowledged, the last acknowledged seq.
final class Flight: Sendable {
    let sent = Atomic<Int>(0)
    let acked = Atomic<Int>(0)
    let lastAcked = Atomic<UInt64>(0)

    /// Waits while `limit` batches are unacknowledged (until `deadline`).
    func waitForRoom(limit: Int, until deadline: ContinuousClock.Instant) async {
        while sent.load(ordering: .acquiring) - acked.load(ordering: .acquiring) >= limit && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .microseconds(200))
        }
    }
}

/// Lowest progress over the subscribers.
func minimumProgress(_ recorders: [Recorder]) -> UInt64 {
    var low = UInt64.max
    for recorder in recorders { low = min(low, recorder.progress.load(ordering: .acquiring)) }
    return low
}

/// A TailResponse read only as far as the line's seq (or whether it is a `dropped` marker): what the
/// Redis subscribers do with their payloads too, so both clients spend the same little per message.
struct TailSeq: ProtoMessage {
    static let protoMessageName = "slipway.logs.v1.TailResponse"
    var seq: UInt64 = 0
    var dropped = false

    init() {}

    init(serializedBuffer buffer: UnsafeRawBufferPointer) throws(ProtoDecodingError) {
        var position = 0
        func fail() -> ProtoDecodingError { ProtoDecodingError(messageName: Self.protoMessageName, reason: "malformed") }
        func varint() throws(ProtoDecodingError) -> UInt64 {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while position < buffer.count && shift < 64 {
                let byte = buffer[position]
                position += 1
                value |= UInt64(byte & 0x7F) << shift
                if byte & 0x80 == 0 { return value }
                shift += 7
            }
            throw fail()
        }
        func skip(_ wire: UInt64) throws(ProtoDecodingError) {
            switch wire {
            case 0: _ = try varint()
            case 1: position += 8
            case 2: position += Int(try varint())
            case 5: position += 4
            default: throw fail()
            }
        }
        var end = buffer.count
        var inLine = false
        while position < end {
            let tag = try varint()
            let (field, wire) = (tag >> 3, tag & 7)
            if !inLine && field == 1 && wire == 2 {  // line: read into it
                let length = Int(try varint())
                end = min(end, position + length)
                inLine = true
                continue
            }
            if inLine && field == 2 && wire == 0 {  // line.seq
                seq = try varint()
                return
            }
            if !inLine && field == 2 {  // dropped
                dropped = true
                return
            }
            try skip(wire)
        }
        if !inLine { throw fail() }
    }

    func serializedBytes() -> [UInt8] { [] }
}
