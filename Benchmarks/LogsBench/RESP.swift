import NIOCore
import NIOPosix

/// A RESP (Redis serialization protocol, v2) value.
enum RESPValue: Sendable {
    case simple(ByteBuffer)
    case error(ByteBuffer)
    case integer(Int64)
    case bulk(ByteBuffer?)
    case array([RESPValue]?)
}

struct RESPProtocolError: Error, CustomStringConvertible {
    var description: String
}

/// Decodes RESP values from the byte stream, one message per complete value.
struct RESPDecoder: ByteToMessageDecoder {
    typealias InboundOut = RESPValue

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let start = buffer.readerIndex
        guard let value = try Self.parse(&buffer) else {
            buffer.moveReaderIndex(to: start)
            return .needMoreData
        }
        context.fireChannelRead(Self.wrapInboundOut(value))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }

    /// One value from the buffer, or nil when it is not complete yet (the reader index is then undefined).
    static func parse(_ buffer: inout ByteBuffer) throws -> RESPValue? {
        guard let type = buffer.readInteger(as: UInt8.self) else { return nil }
        switch type {
        case UInt8(ascii: "+"):
            return readLine(&buffer).map(RESPValue.simple)
        case UInt8(ascii: "-"):
            return readLine(&buffer).map(RESPValue.error)
        case UInt8(ascii: ":"):
            guard let line = readLine(&buffer) else { return nil }
            return .integer(try integer(line))
        case UInt8(ascii: "$"):
            guard let line = readLine(&buffer) else { return nil }
            let length = try integer(line)
            if length < 0 { return .bulk(nil) }
            guard buffer.readableBytes >= Int(length) + 2, let body = buffer.readSlice(length: Int(length)) else { return nil }
            buffer.moveReaderIndex(forwardBy: 2)
            return .bulk(body)
        case UInt8(ascii: "*"):
            guard let line = readLine(&buffer) else { return nil }
            let count = try integer(line)
            if count < 0 { return .array(nil) }
            var values: [RESPValue] = []
            values.reserveCapacity(Int(count))
            for _ in 0..<count {
                guard let value = try parse(&buffer) else { return nil }
                values.append(value)
            }
            return .array(values)
        default:
            throw RESPProtocolError(description: "unexpected RESP type byte \(type)")
        }
    }

    /// The bytes up to CRLF (consumed), or nil when CRLF has not arrived.
    private static func readLine(_ buffer: inout ByteBuffer) -> ByteBuffer? {
        guard let cr = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\r")) else { return nil }
        let length = cr - buffer.readerIndex
        guard buffer.readableBytes >= length + 2, let line = buffer.readSlice(length: length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 2)
        return line
    }

    static func integer(_ line: ByteBuffer) throws -> Int64 {
        var value: Int64 = 0
        var negative = false
        for (i, byte) in line.readableBytesView.enumerated() {
            if i == 0 && byte == UInt8(ascii: "-") { negative = true; continue }
            guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else {
                throw RESPProtocolError(description: "bad RESP integer \(String(buffer: line))")
            }
            value = value * 10 + Int64(byte - UInt8(ascii: "0"))
        }
        return negative ? -value : value
    }
}

/// Encodes a command as a RESP array of bulk strings.
func writeCommand(_ parts: [String], into buffer: inout ByteBuffer) {
    buffer.writeString("*\(parts.count)\r\n")
    for part in parts {
        buffer.writeString("$\(part.utf8.count)\r\n")
        buffer.writeString(part)
        buffer.writeString("\r\n")
    }
}

/// A SUBSCRIBE connection: confirms the subscription, then records each message's seq (the payload
/// starts with the seq in decimal followed by ':').
final class RESPSubscriberHandler: ChannelInboundHandler {
    typealias InboundIn = RESPValue

    let recorder: Recorder
    let clock: BenchClock
    let subscribed: EventLoopPromise<Void>
    private var confirmed = false

    init(recorder: Recorder, clock: BenchClock, subscribed: EventLoopPromise<Void>) {
        self.recorder = recorder
        self.clock = clock
        self.subscribed = subscribed
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .array(let items?) = Self.unwrapInboundIn(data), items.count == 3, case .bulk(let kind?) = items[0] else {
            recorder.error = "unexpected RESP value on a subscriber connection"
            return
        }
        if kind.readableBytes == 7 {  // "message"
            guard case .bulk(let payload?) = items[2] else { return }
            var seq: UInt64 = 0
            for byte in payload.readableBytesView {
                if byte == UInt8(ascii: ":") { break }
                seq = seq * 10 + UInt64(byte &- UInt8(ascii: "0"))
            }
            recorder.record(seq: seq, at: clock.micros())
        } else if !confirmed {  // "subscribe"
            confirmed = true
            subscribed.succeed()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        recorder.error = "\(error)"
        if !confirmed { confirmed = true; subscribed.fail(error) }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !confirmed { confirmed = true; subscribed.fail(RESPProtocolError(description: "connection closed before SUBSCRIBE was confirmed")) }
    }
}

/// The PUBLISH connection: records each reply's time; every `batch` replies acknowledge a batch.
final class RESPPublisherHandler: ChannelInboundHandler {
    typealias InboundIn = RESPValue

    let clock: BenchClock
    let acks: AckTimes
    let flight: Flight
    let batch: Int
    private var replies = 0

    init(clock: BenchClock, acks: AckTimes, flight: Flight, batch: Int) {
        self.clock = clock
        self.acks = acks
        self.flight = flight
        self.batch = batch
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        acks.times.append(clock.micros())
        switch Self.unwrapInboundIn(data) {
        case .integer(let receivers):
            if receivers < acks.subscribers { acks.short += 1 }
        case .error(let message):
            acks.errors.append("redis: \(String(buffer: message))")
        default:
            acks.errors.append("unexpected reply to PUBLISH")
        }
        replies += 1
        if replies % batch == 0 {
            flight.lastAcked.store(UInt64(replies), ordering: .releasing)
            flight.acked.wrappingAdd(1, ordering: .releasing)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        acks.errors.append("\(error)")
        context.close(promise: nil)
    }
}

/// Reply times of the published lines (index i: seq i+1) and what went wrong; written on the
/// publisher's event loop, read once every batch is acknowledged.
final class AckTimes: @unchecked Sendable {
    let subscribers: Int
    var times: [UInt32] = []
    var short = 0
    var errors: [String] = []

    init(subscribers: Int) { self.subscribers = subscribers }
}

/// Opens a connection to redis with `handler` after the RESP decoder.
func connectRedis(host: String, port: Int, group: any EventLoopGroup, handler: @escaping @Sendable (any Channel) -> any ChannelHandler) async throws -> any Channel {
    try await ClientBootstrap(group: group)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .connectTimeout(.seconds(10))
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPDecoder()))
                try channel.pipeline.syncOperations.addHandler(handler(channel))
            }
        }
        .connect(host: host, port: port)
        .get()
}
