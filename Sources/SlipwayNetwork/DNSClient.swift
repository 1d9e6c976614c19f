import Foundation
import NIOCore
import NIOPosix

/// A stub resolver for the checks of custom domains: one question over UDP to a configured
/// resolver, the answer's CNAME, A, AAAA and TXT records (RFC 1035, RFC 3596).
public struct DNSClient: Sendable {
    public enum RecordType: UInt16, Sendable { case a = 1, cname = 5, txt = 16, aaaa = 28 }

    public struct Answer: Sendable, Equatable {
        /// 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, …
        public var responseCode: Int
        /// CNAME targets in the order given (the resolver follows the chain).
        public var cnames: [String] = []
        public var addresses: [String] = []
        /// Each TXT record, its character-strings joined (RFC 7208 §3.3's reading).
        public var texts: [String] = []
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public var resolver: SocketAddress
    public var timeout: TimeAmount

    public init(resolver: SocketAddress, timeout: TimeAmount = .seconds(2)) {
        self.resolver = resolver
        self.timeout = timeout
    }

    /// The first nameserver of /etc/resolv.conf, port 53.
    public static func systemResolver() -> SocketAddress? {
        guard let text = try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count >= 2, fields[0] == "nameserver", let address = try? SocketAddress(ipAddress: String(fields[1]), port: 53) {
                return address
            }
        }
        return nil
    }

    public func query(_ name: String, type: RecordType) async throws -> Answer {
        let id = UInt16.random(in: 0...UInt16.max)
        let query = Self.encodeQuery(id: id, name: name, type: type)
        let resolver = self.resolver
        let channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: resolver.protocol == .inet6 ? "::" : "0.0.0.0", port: 0).get()
        defer { channel.close(promise: nil) }
        // Made once the channel exists, and always completed: by the answer, an error, or the timeout.
        let promise = channel.eventLoop.makePromise(of: [UInt8].self)
        let timeout = channel.eventLoop.scheduleTask(in: self.timeout) {
            promise.fail(Failure(description: "no answer from the resolver \(resolver) within \(self.timeout.nanoseconds / 1_000_000) ms"))
        }
        defer { timeout.cancel() }
        do {
            try await channel.pipeline.addHandler(Collector(id: id, promise: promise))
            try await channel.writeAndFlush(AddressedEnvelope(remoteAddress: resolver, data: ByteBuffer(bytes: query)))
        } catch {
            promise.fail(error)
            throw error
        }
        let bytes = try await promise.futureResult.get()
        return try Self.decodeAnswer(bytes, id: id)
    }

    static func encodeQuery(id: UInt16, name: String, type: RecordType) -> [UInt8] {
        var out: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xff), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") {
            out.append(UInt8(label.utf8.count))
            out.append(contentsOf: label.utf8)
        }
        out.append(0)
        out += [UInt8(type.rawValue >> 8), UInt8(type.rawValue & 0xff), 0, 1]
        return out
    }

    static func decodeAnswer(_ bytes: [UInt8], id: UInt16) throws -> Answer {
        let malformed = Failure(description: "malformed DNS answer")
        guard bytes.count >= 12, UInt16(bytes[0]) << 8 | UInt16(bytes[1]) == id else { throw malformed }
        var answer = Answer(responseCode: Int(bytes[3] & 0x0f))
        let questions = Int(bytes[4]) << 8 | Int(bytes[5])
        let answers = Int(bytes[6]) << 8 | Int(bytes[7])
        var offset = 12
        for _ in 0..<questions {
            _ = try readName(bytes, &offset)
            offset += 4
        }
        for _ in 0..<answers {
            _ = try readName(bytes, &offset)
            guard offset + 10 <= bytes.count else { throw malformed }
            let type = UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
            let length = Int(bytes[offset + 8]) << 8 | Int(bytes[offset + 9])
            offset += 10
            guard offset + length <= bytes.count else { throw malformed }
            switch RecordType(rawValue: type) {
            case .a where length == 4:
                answer.addresses.append(bytes[offset..<offset + 4].map(String.init).joined(separator: "."))
            case .aaaa where length == 16:
                var words: [String] = []
                for i in stride(from: offset, to: offset + 16, by: 2) { words.append(String(UInt16(bytes[i]) << 8 | UInt16(bytes[i + 1]), radix: 16)) }
                answer.addresses.append(words.joined(separator: ":"))
            case .cname:
                var target = offset
                answer.cnames.append(try readName(bytes, &target))
            case .txt:
                var text: [UInt8] = []
                var position = offset
                while position < offset + length {
                    let size = Int(bytes[position])
                    guard position + 1 + size <= offset + length else { throw malformed }
                    text += bytes[(position + 1)..<(position + 1 + size)]
                    position += 1 + size
                }
                answer.texts.append(String(decoding: text, as: UTF8.self))
            default:
                break
            }
            offset += length
        }
        return answer
    }

    /// A possibly compressed name (RFC 1035 §4.1.4), lowercased, without the trailing dot.
    static func readName(_ bytes: [UInt8], _ offset: inout Int) throws -> String {
        var labels: [String] = []
        var position = offset
        var jumped = false
        for _ in 0..<128 {
            guard position < bytes.count else { break }
            let length = Int(bytes[position])
            if length == 0 {
                if !jumped { offset = position + 1 }
                return labels.joined(separator: ".").lowercased()
            }
            if length & 0xc0 == 0xc0 {
                guard position + 1 < bytes.count else { break }
                if !jumped { offset = position + 2 }
                jumped = true
                position = (length & 0x3f) << 8 | Int(bytes[position + 1])
                continue
            }
            guard position + 1 + length <= bytes.count else { break }
            labels.append(String(decoding: bytes[(position + 1)...(position + length)], as: UTF8.self))
            position += 1 + length
        }
        throw Failure(description: "malformed name in DNS answer")
    }

    private final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let id: UInt16
        let promise: EventLoopPromise<[UInt8]>

        init(id: UInt16, promise: EventLoopPromise<[UInt8]>) {
            self.id = id
            self.promise = promise
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data).data
            guard let bytes = buffer.readBytes(length: buffer.readableBytes), bytes.count >= 2,
                  UInt16(bytes[0]) << 8 | UInt16(bytes[1]) == id else { return }  // not our answer
            promise.succeed(bytes)
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            promise.fail(error)
        }
    }
}

/// Whether a custom domain points at the load balancer: a CNAME to the route's default domain, or an
/// A/AAAA record with one of the load balancer's addresses.
public struct DomainChecker: Sendable {
    public var dns: DNSClient
    /// The load balancer's public addresses.
    public var addresses: Set<String>

    public init(dns: DNSClient, addresses: Set<String>) {
        self.dns = dns
        self.addresses = addresses
    }

    /// The TXT record that proves a domain is its claimant's: `_slipway-challenge.<domain>`.
    public static func ownershipRecord(_ domain: String) -> String { "_slipway-challenge." + domain }

    /// Verified when the domain points here and, given an `ownershipToken`, its ownership record
    /// holds that token: pointing at the load balancer alone does not tell two tenants apart (both
    /// can name a domain whose DNS a third party pointed here), the record only its owner can add does.
    public func check(_ domain: String, defaultDomain: String, ownershipToken: String? = nil) async -> NetworkState.DomainCheck {
        let pointing = await checkPointing(domain, defaultDomain: defaultDomain)
        guard let ownershipToken, pointing.state != .error else { return pointing }
        let record = Self.ownershipRecord(domain)
        let texts: [String]
        do {
            let answer = try await dns.query(record, type: .txt)
            if answer.responseCode != 0 && answer.responseCode != 3 {
                return .init(state: .error, reason: "the resolver answered \(record) TXT with response code \(answer.responseCode); retrying later", checkedAt: pointing.checkedAt)
            }
            texts = answer.texts
        } catch {
            return .init(state: .error, reason: "DNS check of \(record) failed: \(error)", checkedAt: pointing.checkedAt)
        }
        if texts.contains(ownershipToken) {
            return pointing.state == .verified
                ? .init(state: .verified, reason: pointing.reason + "; TXT \(record) proves ownership", checkedAt: pointing.checkedAt)
                : pointing
        }
        let add = "add a TXT record \(record) with the value \(ownershipToken) (it proves the domain is yours)"
        return pointing.state == .verified
            ? .init(state: .pending, reason: "\(pointing.reason), but no ownership record yet: \(add)", checkedAt: pointing.checkedAt)
            : .init(state: pointing.state, reason: "\(pointing.reason); and \(add)", checkedAt: pointing.checkedAt)
    }

    func checkPointing(_ domain: String, defaultDomain: String) async -> NetworkState.DomainCheck {
        let now = Date().timeIntervalSince1970
        var cnames: [String] = []
        var found: [String] = []
        var codes: [Int] = []
        for type in [DNSClient.RecordType.a, .aaaa] {
            do {
                let answer = try await dns.query(domain, type: type)
                codes.append(answer.responseCode)
                cnames += answer.cnames
                found += answer.addresses
            } catch {
                return .init(state: .error, reason: "DNS check failed: \(error)", checkedAt: now)
            }
        }
        let expected = "a CNAME to \(defaultDomain) or an A/AAAA record with \(addresses.sorted().joined(separator: ", "))"
        if cnames.contains(defaultDomain) {
            return .init(state: .verified, reason: "CNAME to \(defaultDomain)", checkedAt: now)
        }
        if let address = found.first(where: addresses.contains) {
            return .init(state: .verified, reason: "resolves to \(address), an address of the load balancer", checkedAt: now)
        }
        if codes.contains(where: { $0 != 0 && $0 != 3 }) {
            return .init(state: .error, reason: "the resolver answered with response code \(codes.first { $0 != 0 && $0 != 3 }!) (2 is SERVFAIL); retrying later", checkedAt: now)
        }
        if found.isEmpty && cnames.isEmpty {
            return .init(state: .pending, reason: "\(domain) has no A, AAAA or CNAME record yet; add \(expected)", checkedAt: now)
        }
        let seen = (cnames.map { "CNAME \($0)" } + found).joined(separator: ", ")
        return .init(state: .pending, reason: "\(domain) resolves to \(seen); expected \(expected)", checkedAt: now)
    }
}
